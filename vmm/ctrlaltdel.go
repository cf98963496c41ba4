package vmm

import (
	"errors"
	"fmt"
)

// SendCtrlAltDel presses Ctrl+Alt+Del on the guest's keyboard, which a
// Linux guest treats as a request to reboot cleanly (and, with reboot=k
// panic=1 and no reboot target, to stop the microVM). Guests without an
// i8042 keyboard driver, such as the probe, ignore it.
func (v *VM) SendCtrlAltDel() error {
	v.mu.Lock()
	started, stopping := v.started, v.stopping.Load()
	v.mu.Unlock()
	if !started || stopping {
		return errors.New("send Ctrl+Alt+Del: the VM is not running")
	}
	if err := v.i8042.TriggerCtrlAltDel(); err != nil {
		return fmt.Errorf("send Ctrl+Alt+Del: %w", err)
	}
	return nil
}
