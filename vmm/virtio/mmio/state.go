package mmio

import (
	"errors"
	"fmt"

	"github.com/voltvmm/volt/vmm/virtio"
)

// State is the transport's part of a device snapshot, plain data: the
// registers the driver set, the negotiated features and every queue. The
// device's own state (configuration, connections) is saved by its package.
type State struct {
	Status            uint32              `json:"status"` // DEVICE_NEEDS_RESET included
	DeviceFeaturesSel uint32              `json:"device_features_sel"`
	DriverFeaturesSel uint32              `json:"driver_features_sel"`
	DriverFeatures    uint64              `json:"driver_features"`
	QueueSel          uint32              `json:"queue_sel"`
	SHMSel            uint32              `json:"shm_sel"`
	InterruptStatus   uint32              `json:"interrupt_status"`
	ConfigGeneration  uint32              `json:"config_generation"`
	Queues            []virtio.QueueState `json:"queues"`
}

// ErrRunning is returned by State while the worker runs.
var ErrRunning = errors.New("virtio-mmio: device worker is running: Pause first")

// State captures the transport. The worker must be stopped (Pause), so that
// the queues' indices are not moving.
func (t *Transport) State() (State, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.worker != nil {
		select {
		case <-t.worker.done: // exited (broken): its queues are still
		default:
			return State{}, fmt.Errorf("%s: %w", t.name, ErrRunning)
		}
	}
	st := State{
		Status:            t.currentStatus(),
		DeviceFeaturesSel: t.deviceFeaturesSel,
		DriverFeaturesSel: t.driverFeaturesSel,
		DriverFeatures:    t.driverFeatures,
		QueueSel:          t.queueSel,
		SHMSel:            t.shmSel,
		InterruptStatus:   t.intStatus.Load(),
		ConfigGeneration:  t.configGen.Load(),
	}
	for _, q := range t.queues {
		st.Queues = append(st.Queues, q.State())
	}
	return st, nil
}

const knownStatus = virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK |
	virtio.StatusDriverOK | virtio.StatusDeviceNeedsReset | virtio.StatusFailed

// Restore puts a freshly made transport (nothing negotiated yet) into the
// saved state, treating st as untrusted: status bits in order, features
// offered by this device, the same queues, and each queue checked against
// guest memory. If the driver had set DRIVER_OK the device is activated
// again, but its worker does not start until Resume. Restore the device's
// own state (its package's Restore) before calling this.
func (t *Transport) Restore(st State) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.status.Load() != 0 || t.activated || t.closed {
		return fmt.Errorf("%s: restore into a transport that is already in use", t.name)
	}
	if st.Status&^knownStatus != 0 {
		return fmt.Errorf("%s: restore: unknown status bits %#x", t.name, st.Status&^knownStatus)
	}
	for i := 1; i < len(statusOrder); i++ {
		if st.Status&statusOrder[i] != 0 && st.Status&statusOrder[i-1] == 0 {
			return fmt.Errorf("%s: restore: status %#x sets %#x without %#x", t.name, st.Status, statusOrder[i], statusOrder[i-1])
		}
	}
	if st.DriverFeatures&^t.offered != 0 {
		return fmt.Errorf("%s: restore: negotiated features %#x include %#x, which this device does not offer", t.name, st.DriverFeatures, st.DriverFeatures&^t.offered)
	}
	if st.Status&virtio.StatusFeaturesOK != 0 && st.DriverFeatures&virtio.FeatureVersion1 == 0 {
		return fmt.Errorf("%s: restore: FEATURES_OK without VIRTIO_F_VERSION_1", t.name)
	}
	if st.InterruptStatus&^(virtio.InterruptUsedBuffer|virtio.InterruptConfigChange) != 0 {
		return fmt.Errorf("%s: restore: unknown interrupt status bits %#x", t.name, st.InterruptStatus)
	}
	if len(st.Queues) != len(t.maxSizes) {
		return fmt.Errorf("%s: restore: state has %d queues, the device has %d", t.name, len(st.Queues), len(t.maxSizes))
	}
	driverOK := st.Status&virtio.StatusDriverOK != 0
	queues := make([]*virtio.Queue, len(st.Queues))
	for i, qs := range st.Queues {
		if qs.Active != driverOK {
			return fmt.Errorf("%s: restore: queue %d active=%v with status %#x", t.name, i, qs.Active, st.Status)
		}
		q, err := virtio.RestoreQueue(i, t.maxSizes[i], qs, t.mem, st.DriverFeatures, t.intr)
		if err != nil {
			return fmt.Errorf("%s: restore: %w", t.name, err)
		}
		queues[i] = q
	}
	t.queues = queues
	t.deviceFeaturesSel, t.driverFeaturesSel = st.DeviceFeaturesSel, st.DriverFeaturesSel
	t.driverFeatures, t.queueSel, t.shmSel = st.DriverFeatures, st.QueueSel, st.SHMSel
	t.intStatus.Store(st.InterruptStatus)
	t.configGen.Store(st.ConfigGeneration)
	t.status.Store(st.Status &^ virtio.StatusDeviceNeedsReset)
	t.paused = true
	if st.Status&virtio.StatusDeviceNeedsReset != 0 {
		err := errors.New("restored in DEVICE_NEEDS_RESET")
		t.brokenErr.Store(&err)
		t.needsReset.Store(true)
		return nil
	}
	if driverOK && st.Status&virtio.StatusFailed == 0 {
		if err := t.dev.Activate(t.activation()); err != nil {
			t.reset() // leave nothing half restored
			return fmt.Errorf("%s: restore: activate: %w", t.name, err)
		}
		t.activated = true
	}
	return nil
}
