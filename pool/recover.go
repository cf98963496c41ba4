package pool

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/internal/jailpath"
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
		var proc *process
		var err error
		if r.Jail != nil {
			proc, err = p.adoptJailed(r)
		} else {
			proc, err = adoptProcess(r.PID, r.StartTime)
		}
		if err != nil {
			if r.Jail != nil {
				p.removeRecordedJail(r.Jail)
			}
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
		var vj *vmJail
		uidOK := true
		if j := r.Jail; j != nil {
			vj = &vmJail{dir: j.Dir, uid: j.UID, root: jailpath.Root(j.Dir)}
			if p.uids != nil {
				uidOK = p.uids.mark(j.UID)
			}
		}
		if lease != nil && now.Before(lease.ExpiresAt) && t != nil && uidOK {
			v := &vm{id: r.ID, template: r.Template, dir: dir, api: client.New(r.APISock), vsockUDS: r.VsockUDS,
				netns: lease.Netns, proc: proc, state: vmLeased, lease: lease, jail: vj}
			if vj != nil && r.Jail.Manifest != "" {
				p.leaseAdopted(v, r.Jail.Manifest)
			}
			p.vms[v.id] = v
			t.leased++
			p.watch(v)
			p.cfg.Log.Info("recover: lease adopted", "lease", r.ID, "template", r.Template, "pid", r.PID, "expires", lease.ExpiresAt)
			continue
		}
		if vj != nil && uidOK && p.uids != nil {
			p.uids.put(vj.uid)
		}
		why := "voltpool restarted"
		switch {
		case !uidOK:
			why = "its jail's uid is outside the range or another VMM's"
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
		if r.Jail != nil {
			p.removeRecordedJail(r.Jail)
		}
		p.cfg.Log.Info("recover: VMM ended", "vm", r.ID, "state", r.State, "why", why)
	}
	p.recoverJails()
	// VMMs whose record was never written or is unreadable.
	adopted := map[int]bool{}
	for _, v := range p.vms {
		adopted[v.proc.pid] = true
		adopted[v.pid()] = true
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

// adoptJailed adopts a jailed VMM of record r: its supervisor (the process
// to wait for) and, inside, volt-vmm (the one to kill). If either is gone,
// the other is ended and os.ErrProcessDone returned.
func (p *Pool) adoptJailed(r vmRecord) (*process, error) {
	sup, errSup := adoptProcess(r.Jail.SupervisorPID, r.Jail.SupervisorStart)
	ref, errVMM := openPidRef(r.PID, r.StartTime)
	switch {
	case errSup == nil && errVMM == nil:
		sup.jailed = true
		sup.setVMM(ref)
		return sup, nil
	case errSup == nil:
		// volt-vmm is gone; its supervisor is on its way out.
		sup.jailed = true
		if err := killAndWait(sup, 5*time.Second); err != nil {
			p.cfg.Log.Error("recover: kill volt-jailer", "vm", r.ID, "err", err)
		}
	case errVMM == nil:
		// The supervisor is gone, so its parent-death signal is on its
		// way to volt-vmm: make sure.
		unix.PidfdSendSignal(ref.fd, unix.SIGKILL, nil, 0)
		unix.Close(ref.fd)
	}
	if errSup != nil && !errors.Is(errSup, os.ErrProcessDone) {
		return nil, errSup
	}
	return nil, os.ErrProcessDone
}

// leaseAdopted takes the pool's CAS lease again for an adopted jailed VMM
// (the previous daemon's died with it). The VMM's memory is mapped either
// way; without the lease only a GC could take chunks it maps, which its
// mappings keep readable.
func (p *Pool) leaseAdopted(v *vm, manifest string) {
	d, err := cas.ParseDigest(manifest)
	if err == nil && p.cas == nil {
		err = errors.New("this pool has no CAS store (--store)")
	}
	if err == nil {
		var l *cas.Lease
		if l, err = p.cas.Lease(p.ctx, cas.LeaseOptions{}, d); err == nil {
			v.jail.casLease, v.jail.manifest = l, d
		}
	}
	if err != nil {
		p.cfg.Log.Warn("recover: the memory of an adopted jailed VMM is not leased", "vm", v.id, "manifest", manifest, "err", err)
	}
}

// jailBase is where this pool's chroots are (a pool restarted without
// --jail still cleans up after one with it).
func (p *Pool) jailBase() string {
	if p.cfg.Jail != nil {
		return p.cfg.Jail.ChrootBase
	}
	return filepath.Join(p.cfg.StateDir, "jail")
}

// removeRecordedJail removes a recorded jail's directory if it lies in
// this pool's chroot base.
func (p *Pool) removeRecordedJail(j *jailRecord) {
	base := filepath.Join(p.jailBase(), filepath.Base(p.cfg.VMMBin)) + "/"
	if !strings.HasPrefix(j.Dir, base) || filepath.Dir(j.Dir)+"/" != base {
		p.cfg.Log.Error("recover: a jail recorded outside the chroot base is not removed", "dir", j.Dir)
		return
	}
	if err := removeJailDir(j.Dir); err != nil {
		p.cfg.Log.Error("recover: remove jail", "dir", j.Dir, "err", err)
	}
}

// recoverJails kills jailed VMMs no record accounts for (their volt-jailer
// runs with this pool's chroot base) and removes every chroot that no
// adopted VMM uses.
func (p *Pool) recoverJails() {
	base := p.jailBase()
	adopted := map[int]bool{}
	keep := map[string]bool{}
	for _, v := range p.vms {
		adopted[v.proc.pid] = true
		if v.jail != nil {
			keep[v.jail.dir] = true
		}
	}
	for _, pid := range strayJailers(base) {
		if adopted[pid] {
			continue
		}
		st, err := procStartTime(pid)
		if err != nil {
			continue
		}
		sup, err := adoptProcess(pid, st)
		if err != nil {
			continue
		}
		// volt-vmm first, so that its supervisor removes the jail's
		// cgroups as it exits.
		for _, c := range childrenOf(pid) {
			if r, err := openPidRef(c, 0); err == nil {
				unix.PidfdSendSignal(r.fd, unix.SIGKILL, nil, 0)
				unix.Close(r.fd)
			}
		}
		go sup.wait()
		select {
		case <-sup.done:
		case <-time.After(5 * time.Second):
			sup.killSupervisor()
			<-sup.done
		}
		p.cfg.Log.Info("recover: stray jailed VMM killed", "volt-jailer", pid)
	}
	dir := filepath.Join(base, filepath.Base(p.cfg.VMMBin))
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		jd := filepath.Join(dir, e.Name())
		if keep[jd] {
			continue
		}
		if err := removeJailDir(jd); err != nil {
			p.cfg.Log.Error("recover: remove jail", "dir", jd, "err", err)
		}
	}
}
