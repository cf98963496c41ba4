/*
 * Boot-marker codes written as single bytes to I/O port 0x80.
 *
 * Mirrors guest/marker/marker.go; TestMarkerHeaderMatches parses the
 * "#define MARKER_X 0xNN" lines below, so keep exactly that form.
 * The probe has no workload, so it never writes MARKER_WORKLOAD; the line
 * is here so the header covers the whole convention. MARKER_KERNEL_PANIC
 * is written by its "panic" command.
 */
#ifndef VOLT_PROBE_MARKER_H
#define VOLT_PROBE_MARKER_H

#define MARKER_PORT 0x80

#define MARKER_KERNEL_ENTRY 0x40
#define MARKER_KERNEL_LONG_MODE 0x41
#define MARKER_KERNEL_DEVICES 0x42
#define MARKER_KERNEL_PANIC 0x5f
#define MARKER_PID1 0x60
#define MARKER_READY 0x61
#define MARKER_WORKLOAD 0x62
#define MARKER_SHUTDOWN 0x6f

#endif
