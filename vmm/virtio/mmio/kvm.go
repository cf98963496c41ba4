package mmio

import (
	"errors"
	"fmt"
	"os"

	"github.com/voltvmm/volt/vmm/virtio"
)

// NotifyEventFDs returns one eventfd per queue, creating them on the first
// call, for registration with KVM_IOEVENTFD at base+QueueNotifyOffset (4
// bytes, data match = the queue index). A goroutine per eventfd, owned by
// the transport until Close, turns its signals into the same notifications
// a QueueNotify write produces.
func (t *Transport) NotifyEventFDs() ([]*virtio.EventFD, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("%s: transport closed", t.name)
	}
	if t.eventfds != nil {
		return t.eventfds, nil
	}
	efds := make([]*virtio.EventFD, 0, len(t.queues))
	for range t.queues {
		e, err := virtio.NewEventFD()
		if err != nil {
			for _, e := range efds {
				e.Close()
			}
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		efds = append(efds, e)
	}
	t.eventfds = efds
	for i, e := range efds {
		t.forwarders.Add(1)
		go t.forward(i, e)
	}
	return efds, nil
}

// forward moves ioeventfd signals of queue i to its notification channel
// until the eventfd is closed.
func (t *Transport) forward(i int, e *virtio.EventFD) {
	defer t.forwarders.Done()
	for {
		if _, err := e.Wait(); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				t.log.Error("virtio-mmio: ioeventfd wait failed; notifications of this queue now need QueueNotify exits", "queue", i, "err", err)
			}
			return
		}
		t.Notify(i)
	}
}

// KVM is the part of *kvm.VM that AttachKVM needs.
type KVM interface {
	RegisterIOEventFD(addr uint64, length uint32, fd int, datamatch *uint64) error
	UnregisterIOEventFD(addr uint64, length uint32, fd int, datamatch *uint64) error
	RegisterIRQFD(fd int, gsi uint32) error
	UnregisterIRQFD(fd int, gsi uint32) error
}

// Attachment records what AttachKVM registered, for DetachKVM.
type Attachment struct {
	base    uint64
	gsi     uint32
	irqfd   *virtio.EventFD
	notify  []*virtio.EventFD
	vm      KVM
	handled bool
}

// AttachKVM wires the transport, placed at guest-physical base, into a KVM
// VM: an ioeventfd per queue on QueueNotify and an irqfd on gsi, which
// becomes the transport's interrupt. Call it after the VM's irqchip exists
// and before the guest runs. Without it the transport still works through
// MMIO exits and its Config.IRQ.
func (t *Transport) AttachKVM(vm KVM, base uint64, gsi uint32) (*Attachment, error) {
	efds, err := t.NotifyEventFDs()
	if err != nil {
		return nil, err
	}
	a := &Attachment{base: base, gsi: gsi, vm: vm}
	undo := func() { a.detach() }
	for i, e := range efds {
		fd, err := e.FD()
		if err != nil {
			undo()
			return nil, fmt.Errorf("%s: ioeventfd %d: %w", t.name, i, err)
		}
		match := uint64(i)
		if err := vm.RegisterIOEventFD(base+QueueNotifyOffset, 4, fd, &match); err != nil {
			undo()
			return nil, fmt.Errorf("%s: queue %d: %w", t.name, i, err)
		}
		a.notify = append(a.notify, e)
	}
	irqfd, err := virtio.NewEventFD()
	if err != nil {
		undo()
		return nil, fmt.Errorf("%s: %w", t.name, err)
	}
	fd, err := irqfd.FD()
	if err == nil {
		err = vm.RegisterIRQFD(fd, gsi)
	}
	if err != nil {
		irqfd.Close()
		undo()
		return nil, fmt.Errorf("%s: irqfd on GSI %d: %w", t.name, gsi, err)
	}
	a.irqfd = irqfd
	t.SetIRQ(irqfd)
	return a, nil
}

// DetachKVM unregisters what AttachKVM registered and closes the irqfd; the
// transport must not raise interrupts afterwards (Close it, or SetIRQ).
func (a *Attachment) DetachKVM() error { return a.detach() }

func (a *Attachment) detach() error {
	if a.handled {
		return nil
	}
	a.handled = true
	var errs []error
	for i, e := range a.notify {
		fd, err := e.FD()
		if err == nil {
			match := uint64(i)
			err = a.vm.UnregisterIOEventFD(a.base+QueueNotifyOffset, 4, fd, &match)
		}
		errs = append(errs, err)
	}
	if a.irqfd != nil {
		fd, err := a.irqfd.FD()
		if err == nil {
			err = a.vm.UnregisterIRQFD(fd, a.gsi)
		}
		errs = append(errs, err, a.irqfd.Close())
	}
	return errors.Join(errs...)
}
