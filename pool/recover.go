package pool

import (
	"errors"
	"os"
	"path/filepath"
	"time"

	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/client"
)

// recover ends what a previous daemon left in vms/: a VMM with a live lease
// of a known template is adopted (its lease honoured until it ends); every
// other VMM is killed and every directory without a VMM removed. Runs in
// Open, before anything else touches p.
func (p *Pool) recover() {
	ents, _ := os.ReadDir(p.vmsDir)
	now := time.Now()
	for _, e := range ents {
		dir := filepath.Join(p.vmsDir, e.Name())
		var r vmRecord
		if err := readJSON(filepath.Join(dir, vmRecordFile), &r); err != nil || r.ID != e.Name() || r.PID <= 0 {
			// No usable record: the stray scan below finds its VMM.
			os.RemoveAll(dir)
			continue
		}
		proc, err := adoptProcess(r.PID, r.StartTime)
		if err != nil {
			if !errors.Is(err, os.ErrProcessDone) {
				p.cfg.Log.Error("recover VM", "vm", r.ID, "err", err)
			}
			p.cfg.Log.Info("recover: VMM gone", "vm", r.ID, "state", r.State)
			if _, err := os.Stat(filepath.Join(dir, leaseFile)); err == nil {
				p.recordEnded(r.ID, "its VMM exited while voltpool was down")
			}
			os.RemoveAll(dir)
			continue
		}
		t := p.templates[r.Template]
		var lease *pc.Lease
		var l pc.Lease
		if readJSON(filepath.Join(dir, leaseFile), &l) == nil && l.ID == r.ID {
			lease = &l
		}
		if lease != nil && now.Before(lease.ExpiresAt) && t != nil {
			v := &vm{id: r.ID, template: r.Template, dir: dir, api: client.New(r.APISock), vsockUDS: r.VsockUDS,
				netns: lease.Netns, proc: proc, state: vmLeased, lease: lease}
			p.vms[v.id] = v
			t.leased++
			p.watch(v)
			p.cfg.Log.Info("recover: lease adopted", "lease", r.ID, "template", r.Template, "pid", r.PID, "expires", lease.ExpiresAt)
			continue
		}
		why := "voltpool restarted"
		switch {
		case lease != nil && !now.Before(lease.ExpiresAt):
			why = "it expired at " + lease.ExpiresAt.Format(time.RFC3339) + " while voltpool was down"
		case lease != nil:
			why = "its template " + r.Template + " is gone"
		}
		if lease != nil {
			p.recordEnded(r.ID, why)
		}
		if err := killAndWait(proc, 5*time.Second); err != nil {
			p.cfg.Log.Error("recover: kill", "vm", r.ID, "err", err)
		}
		os.RemoveAll(dir)
		p.cfg.Log.Info("recover: VMM ended", "vm", r.ID, "state", r.State, "why", why)
	}
	// VMMs whose record was never written or is unreadable.
	adopted := map[int]bool{}
	for _, v := range p.vms {
		adopted[v.proc.pid] = true
	}
	strays := append(strayVMMs(p.vmsDir), strayVMMs(filepath.Join(p.cfg.StateDir, "templates"))...)
	for _, pid := range strays {
		if adopted[pid] {
			continue
		}
		st, err := procStartTime(pid)
		if err != nil {
			continue
		}
		proc, err := adoptProcess(pid, st)
		if err != nil {
			continue
		}
		p.cfg.Log.Info("recover: stray VMM killed", "pid", pid)
		if err := killAndWait(proc, 5*time.Second); err != nil {
			p.cfg.Log.Error("recover: kill stray", "pid", pid, "err", err)
		}
	}
}
