package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"testing"
)

// The schemas below are transcribed from Firecracker's swagger,
// src/firecracker/swagger/firecracker.yaml, version 1.17.0-dev (commit
// 004d935399ba6062240af269638635d54229f5bf), for the definitions this
// package serves. Unlike swagger 2.0's default, properties not in a schema
// are errors here: a response field Firecracker does not have would break
// generated clients that decode strictly.

type schema struct {
	typ      string // object, string, integer, boolean, array
	props    map[string]*schema
	required []string
	enum     []string
	min, max *int64
	items    *schema
}

func i64(v int64) *int64 { return &v }

var (
	strSchema  = &schema{typ: "string"}
	boolSchema = &schema{typ: "boolean"}
	intSchema  = &schema{typ: "integer"}

	tokenBucketSchema = &schema{typ: "object", required: []string{"refill_time", "size"}, props: map[string]*schema{
		"one_time_burst": {typ: "integer", min: i64(0)},
		"refill_time":    {typ: "integer", min: i64(0)},
		"size":           {typ: "integer", min: i64(0)},
	}}
	rateLimiterSchema = &schema{typ: "object", props: map[string]*schema{
		"bandwidth": tokenBucketSchema,
		"ops":       tokenBucketSchema,
	}}
	bootSourceSchema = &schema{typ: "object", required: []string{"kernel_image_path"}, props: map[string]*schema{
		"boot_args":         strSchema,
		"initrd_path":       strSchema,
		"kernel_image_path": strSchema,
	}}
	machineConfigSchema = &schema{typ: "object", required: []string{"mem_size_mib", "vcpu_count"}, props: map[string]*schema{
		"cpu_template":      {typ: "string", enum: []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"}},
		"smt":               boolSchema,
		"mem_size_mib":      intSchema,
		"track_dirty_pages": boolSchema,
		"vcpu_count":        {typ: "integer", min: i64(1), max: i64(32)},
		"huge_pages":        {typ: "string", enum: []string{"None", "Transparent", "2M"}},
	}}
	loggerSchema = &schema{typ: "object", props: map[string]*schema{
		"level":           {typ: "string"}, // enum, case-insensitive
		"log_path":        strSchema,
		"show_level":      boolSchema,
		"show_log_origin": boolSchema,
		"module":          strSchema,
	}}
	metricsSchema = &schema{typ: "object", required: []string{"metrics_path"}, props: map[string]*schema{"metrics_path": strSchema}}
	driveSchema   = &schema{typ: "object", required: []string{"drive_id", "is_root_device"}, props: map[string]*schema{
		"drive_id":       strSchema,
		"partuuid":       strSchema,
		"is_root_device": boolSchema,
		"cache_type":     {typ: "string", enum: []string{"Unsafe", "Writeback"}},
		"is_read_only":   boolSchema,
		"path_on_host":   strSchema,
		"rate_limiter":   rateLimiterSchema,
		"io_engine":      {typ: "string", enum: []string{"Sync", "Async"}},
		"socket":         strSchema,
	}}
	netSchema = &schema{typ: "object", required: []string{"host_dev_name", "iface_id"}, props: map[string]*schema{
		"guest_mac":       strSchema,
		"host_dev_name":   strSchema,
		"iface_id":        strSchema,
		"mtu":             {typ: "integer", min: i64(68), max: i64(65535)},
		"rx_rate_limiter": rateLimiterSchema,
		"tx_rate_limiter": rateLimiterSchema,
	}}
	vsockSchema = &schema{typ: "object", required: []string{"guest_cid", "uds_path"}, props: map[string]*schema{
		"guest_cid": {typ: "integer", min: i64(3)},
		"uds_path":  strSchema,
		"vsock_id":  strSchema,
	}}
	entropySchema = &schema{typ: "object", props: map[string]*schema{"rate_limiter": rateLimiterSchema}}

	swagger = map[string]*schema{
		"Error":              {typ: "object", props: map[string]*schema{"fault_message": strSchema}},
		"FirecrackerVersion": {typ: "object", required: []string{"firecracker_version"}, props: map[string]*schema{"firecracker_version": strSchema}},
		"InstanceInfo": {typ: "object", required: []string{"app_name", "id", "state", "vmm_version"}, props: map[string]*schema{
			"app_name":    strSchema,
			"id":          strSchema,
			"state":       {typ: "string", enum: []string{"Not started", "Running", "Paused"}},
			"vmm_version": strSchema,
		}},
		"InstanceActionInfo": {typ: "object", required: []string{"action_type"}, props: map[string]*schema{
			"action_type": {typ: "string", enum: []string{"FlushMetrics", "InstanceStart", "SendCtrlAltDel"}},
		}},
		"Vm": {typ: "object", required: []string{"state"}, props: map[string]*schema{
			"state": {typ: "string", enum: []string{"Paused", "Resumed"}},
		}},
		"BootSource":           bootSourceSchema,
		"MachineConfiguration": machineConfigSchema,
		"Logger":               loggerSchema,
		"Metrics":              metricsSchema,
		"Drive":                driveSchema,
		"NetworkInterface":     netSchema,
		"Vsock":                vsockSchema,
		"EntropyDevice":        entropySchema,
		"SnapshotCreateParams": {typ: "object", required: []string{"mem_file_path", "snapshot_path"}, props: map[string]*schema{
			"mem_file_path": strSchema,
			"snapshot_path": strSchema,
			"snapshot_type": {typ: "string", enum: []string{"Full", "Diff"}},
		}},
		"SnapshotLoadParams": {typ: "object", required: []string{"snapshot_path"}, props: map[string]*schema{
			"enable_diff_snapshots": boolSchema,
			"track_dirty_pages":     boolSchema,
			"mem_file_path":         strSchema,
			"mem_backend": {typ: "object", required: []string{"backend_type", "backend_path"}, props: map[string]*schema{
				"backend_type": {typ: "string", enum: []string{"File", "Uffd"}},
				"backend_path": strSchema,
			}},
			"snapshot_path": strSchema,
			"resume_vm":     boolSchema,
			"network_overrides": {typ: "array", items: &schema{typ: "object", required: []string{"iface_id", "host_dev_name"}, props: map[string]*schema{
				"iface_id": strSchema, "host_dev_name": strSchema,
			}}},
			"vsock_override": {typ: "object", required: []string{"uds_path"}, props: map[string]*schema{"uds_path": strSchema}},
			"clock_realtime": boolSchema,
		}},
		"FullVmConfiguration": {typ: "object", props: map[string]*schema{
			"drives":             {typ: "array", items: driveSchema},
			"boot-source":        bootSourceSchema,
			"logger":             loggerSchema,
			"machine-config":     machineConfigSchema,
			"metrics":            metricsSchema,
			"network-interfaces": {typ: "array", items: netSchema},
			"vsock":              vsockSchema,
			"entropy":            entropySchema,
			// balloon, cpu-config, memory-hotplug, mmds-config and pmem
			// are in the swagger too; volt-vmm never sets them, so they
			// are left out and their appearance would be an error.
		}},
	}
)

// checkSwagger validates a JSON document against a swagger definition.
func checkSwagger(definition string, doc []byte) error {
	s, ok := swagger[definition]
	if !ok {
		return fmt.Errorf("no schema for %s", definition)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("%s: not JSON: %v", definition, err)
	}
	return s.check(definition, v)
}

func (s *schema) check(path string, v any) error {
	switch s.typ {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", path, v)
		}
		for _, r := range s.required {
			if _, ok := m[r]; !ok {
				return fmt.Errorf("%s: required property %q missing", path, r)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p, ok := s.props[k]
			if !ok {
				return fmt.Errorf("%s: property %q is not in the schema", path, k)
			}
			if err := p.check(path+"."+k, m[k]); err != nil {
				return err
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", path, v)
		}
		for i, e := range a {
			if err := s.items.check(fmt.Sprintf("%s[%d]", path, i), e); err != nil {
				return err
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, got %T", path, v)
		}
		if len(s.enum) > 0 && !slices.Contains(s.enum, str) {
			return fmt.Errorf("%s: %q is not one of %v", path, str, s.enum)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", path, v)
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want an integer, got %T", path, v)
		}
		i, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil {
			return fmt.Errorf("%s: %s is not an integer", path, n)
		}
		if s.min != nil && i < *s.min || s.max != nil && i > *s.max {
			return fmt.Errorf("%s: %d outside the schema's range", path, i)
		}
	default:
		return fmt.Errorf("%s: schema type %q unknown", path, s.typ)
	}
	return nil
}

// TestSchemaCheckerRejects keeps the checker honest: it must catch what
// it is there to catch.
func TestSchemaCheckerRejects(t *testing.T) {
	tests := []struct {
		def, doc string
	}{
		{"InstanceInfo", `{"app_name":"a","id":"b","state":"Stopped","vmm_version":"1"}`},
		{"InstanceInfo", `{"app_name":"a","id":"b","state":"Running"}`},
		{"MachineConfiguration", `{"vcpu_count":33,"mem_size_mib":128}`},
		{"MachineConfiguration", `{"vcpu_count":1,"mem_size_mib":128,"extra":1}`},
		{"FullVmConfiguration", `{"drives":{}}`},
		{"Error", `{"fault_message":1}`},
	}
	for _, tt := range tests {
		if err := checkSwagger(tt.def, []byte(tt.doc)); err == nil {
			t.Errorf("%s %s: accepted", tt.def, tt.doc)
		}
	}
}
