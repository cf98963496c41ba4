package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/voltvmm/volt/guest/agent"
)

// RunTimes is where a Run spent its time.
type RunTimes struct {
	Acquire, FirstAnswer, Release time.Duration
}

// Run is what a FaaS caller does: acquire a VM of template, run req through
// its guest agent over vsock, release the VM. The lease is released even
// when the command fails; the first error is returned.
func (c *Client) Run(ctx context.Context, template string, ttl time.Duration, req agent.Request, ac *agent.Client) (agent.Result, Lease, RunTimes, error) {
	var times RunTimes
	t0 := time.Now()
	lease, err := c.Acquire(ctx, template, ttl)
	times.Acquire = time.Since(t0)
	if err != nil {
		return agent.Result{}, lease, times, err
	}
	res, runErr := RunOn(ctx, lease, req, ac)
	times.FirstAnswer = time.Since(t0) - times.Acquire
	t1 := time.Now()
	// A cancelled ctx must not leak the VM: release with a context of
	// its own.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	relErr := c.Release(rctx, lease.ID)
	cancel()
	times.Release = time.Since(t1)
	return res, lease, times, errors.Join(runErr, relErr)
}

// RunOn runs req through the agent of a leased VM.
func RunOn(ctx context.Context, lease Lease, req agent.Request, ac *agent.Client) (agent.Result, error) {
	if lease.VsockUDS == "" {
		return agent.Result{}, fmt.Errorf("lease %s: template %s has no vsock: no agent to run a command", lease.ID, lease.Template)
	}
	conn, err := agent.DialHybrid(ctx, lease.VsockUDS, agent.Port)
	if err != nil {
		return agent.Result{}, fmt.Errorf("lease %s: %w", lease.ID, err)
	}
	defer conn.Close()
	if ac == nil {
		ac = &agent.Client{}
	}
	res, err := ac.Run(ctx, conn, req)
	if err != nil {
		return res, fmt.Errorf("lease %s: %w", lease.ID, err)
	}
	return res, nil
}
