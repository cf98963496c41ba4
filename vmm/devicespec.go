package vmm

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// keyValues splits a device flag's value ("id=rootfs,path=/r.ext4") into its
// pairs, refusing unknown keys, repeats and pairs without a value.
func keyValues(flag, s string, known ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		switch {
		case !ok || v == "":
			return nil, fmt.Errorf("%s %q: %q is not key=value", flag, s, kv)
		case !slices.Contains(known, k):
			return nil, fmt.Errorf("%s %q: unknown key %q (known: %s)", flag, s, k, strings.Join(known, ", "))
		case out[k] != "":
			return nil, fmt.Errorf("%s %q: %s given twice", flag, s, k)
		}
		out[k] = v
	}
	return out, nil
}

func parseBool(flag, key, v string) (bool, error) {
	switch v {
	case "true", "on", "yes", "1":
		return true, nil
	case "false", "off", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("%s: %s=%q is not true or false", flag, key, v)
}

// ParseDrive reads a --drive value: id=ID,(path=PATH|volume=DIR)
// [,readonly=true][,root=true][,direct=true]; a volume= disk is a CAS volume
// in the store that --cas-store names.
func ParseDrive(s string) (DriveConfig, error) {
	kv, err := keyValues("--drive", s, "id", "path", "volume", "readonly", "root", "direct")
	if err != nil {
		return DriveConfig{}, err
	}
	d := DriveConfig{ID: kv["id"], Path: kv["path"], Volume: kv["volume"]}
	for key, dst := range map[string]*bool{"readonly": &d.ReadOnly, "root": &d.Root, "direct": &d.Direct} {
		if v, ok := kv[key]; ok {
			if *dst, err = parseBool("--drive", key, v); err != nil {
				return DriveConfig{}, err
			}
		}
	}
	if d.ID == "" || (d.Path == "") == (d.Volume == "") {
		return DriveConfig{}, fmt.Errorf("--drive %q: id= and one of path= and volume= are required", s)
	}
	return d, nil
}

// ParseVsock reads a --vsock value: cid=N,uds=PATH.
func ParseVsock(s string) (VsockConfig, error) {
	kv, err := keyValues("--vsock", s, "cid", "uds")
	if err != nil {
		return VsockConfig{}, err
	}
	if kv["cid"] == "" || kv["uds"] == "" {
		return VsockConfig{}, fmt.Errorf("--vsock %q: cid= and uds= are required", s)
	}
	cid, err := strconv.ParseUint(kv["cid"], 10, 32)
	if err != nil {
		return VsockConfig{}, fmt.Errorf("--vsock %q: cid=%q is not a number", s, kv["cid"])
	}
	c := VsockConfig{GuestCID: cid, UDSPath: kv["uds"]}
	if err := c.Validate(); err != nil {
		return VsockConfig{}, fmt.Errorf("--vsock %q: %w", s, err)
	}
	return c, nil
}
