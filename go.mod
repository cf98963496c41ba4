module github.com/voltvmm/volt

go 1.26.8

require golang.org/x/sys v0.50.0

require (
	github.com/cilium/ebpf v0.20.0
	github.com/spf13/pflag v1.1.0
)

require (
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/rogpeppe/go-internal v1.14.1 // indirect
)

tool github.com/cilium/ebpf/cmd/bpf2go
