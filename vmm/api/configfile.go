package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/vmm/api/types"
)

// MaxConfigFileSize caps a --config-file; real ones are under a kilobyte.
const MaxConfigFileSize = 1 << 20

// ConfigFile is Firecracker's --config-file format: the bodies of the
// pre-boot requests, keyed by their paths (GET /vm/config returns the same
// shape).
type ConfigFile struct {
	BootSource        *types.BootSource           `json:"boot-source" volt:"required"`
	MachineConfig     *types.MachineConfiguration `json:"machine-config,omitempty"`
	Drives            []types.Drive               `json:"drives,omitempty"`
	NetworkInterfaces []types.NetworkInterface    `json:"network-interfaces,omitempty"`
	Logger            *types.Logger               `json:"logger,omitempty"`
	Metrics           *types.Metrics              `json:"metrics,omitempty"`
	Vsock             *types.Vsock                `json:"vsock,omitempty"`
	Entropy           *types.EntropyDevice        `json:"entropy,omitempty"`
}

// unsupportedSections are Firecracker config sections volt-vmm cannot
// honour; null (as GET /vm/config prints for unset ones) is accepted.
var unsupportedSections = []string{"balloon", "cpu-config", "mmds-config", "pmem", "serial", "memory-hotplug"}

// ParseConfigFile decodes a config file as strictly as request bodies.
func ParseConfigFile(data []byte) (ConfigFile, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err == nil {
		for _, name := range unsupportedSections {
			if raw, ok := top[name]; ok && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
				return ConfigFile{}, fmt.Errorf("section %q is not supported by volt-vmm", name)
			}
			delete(top, name)
		}
		if data, err = json.Marshal(top); err != nil {
			return ConfigFile{}, fmt.Errorf("re-encode config: %w", err)
		}
	}
	// When the file is not an object, decode reports why precisely.
	cf, err := types.Decode[ConfigFile](data)
	if err != nil {
		return cf, err
	}
	if cf.BootSource == nil {
		return cf, errors.New(`"boot-source" is required`)
	}
	return cf, nil
}

// LoadConfigFile reads a config file from path.
func LoadConfigFile(path string) (ConfigFile, error) {
	f, err := hostfile.Open("config file", path)
	if err != nil {
		return ConfigFile{}, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxConfigFileSize+1)); err != nil {
		return ConfigFile{}, fmt.Errorf("config file %s: %w", path, err)
	}
	if buf.Len() > MaxConfigFileSize {
		return ConfigFile{}, fmt.Errorf("config file %s is larger than %d bytes", path, MaxConfigFileSize)
	}
	cf, err := ParseConfigFile(buf.Bytes())
	if err != nil {
		return cf, fmt.Errorf("config file %s: %w", path, err)
	}
	return cf, nil
}

// Apply configures the controller from the file through the same methods
// as the API, so that a file is validated exactly as requests are. The
// logger and metrics come first so that what follows is logged.
func (c *Controller) Apply(cf ConfigFile) error {
	steps := []struct {
		section string
		set     bool
		apply   func() error
	}{
		{"logger", cf.Logger != nil, func() error { return c.PutLogger(*cf.Logger) }},
		{"metrics", cf.Metrics != nil, func() error { return c.PutMetrics(*cf.Metrics) }},
		{"boot-source", cf.BootSource != nil, func() error { return c.PutBootSource(*cf.BootSource) }},
		{"machine-config", cf.MachineConfig != nil, func() error { return c.PutMachineConfig(*cf.MachineConfig) }},
		{"vsock", cf.Vsock != nil, func() error { return c.PutVsock(*cf.Vsock) }},
		{"entropy", cf.Entropy != nil, func() error { return c.PutEntropy(*cf.Entropy) }},
	}
	for _, s := range steps {
		if !s.set {
			continue
		}
		if err := s.apply(); err != nil {
			return fmt.Errorf("%s: %w", s.section, err)
		}
	}
	for i, d := range cf.Drives {
		if err := c.PutDrive(d.DriveID, d); err != nil {
			return fmt.Errorf("drives[%d]: %w", i, err)
		}
	}
	for i, n := range cf.NetworkInterfaces {
		if err := c.PutNetworkInterface(n.IfaceID, n); err != nil {
			return fmt.Errorf("network-interfaces[%d]: %w", i, err)
		}
	}
	return nil
}
