// Package jailpath is volt-jailer's directory layout, Firecracker's jailer's:
// a VM's jail is <chroot base>/<exec file's name>/<id>, its chroot the jail's
// root/. The jailer makes it; voltpool, voltbench and volt vm --jail start
// the jailer and must find the same directories without importing it.
package jailpath

import "path/filepath"

// Dir is the jail of VM id whose VMM is execFile, under chrootBase.
func Dir(chrootBase, execFile, id string) string {
	return filepath.Join(chrootBase, filepath.Base(execFile), id)
}

// Root is the chroot in jail dir (a Dir).
func Root(dir string) string { return filepath.Join(dir, "root") }
