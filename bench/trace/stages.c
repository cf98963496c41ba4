//go:build ignore

// Boot-stage tracer for one or more VMM processes. A process joins `procs`
// (keyed by its TGID) before it execs the VMM: at its fork, when the thread
// that forked it is a registered launcher (`launchers`), or by user space
// putting its TGID there. Every program below then records, for that
// process and all its threads, the first kernel time of each milestone and
// counts KVM exits between milestones. Only tracepoints are used (no
// kprobes): classic ones with argument layouts that have been stable for
// years, and sched_process_fork in its BTF-typed form (tp_btf), which hands
// over the child's task and so tells a new process from a new thread.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

// Milestones, in the order a boot normally reaches them. Guest boot
// markers (port 0x80 codes 0x40..0x7f) map to MS_MARKER + code - 0x40.
// MS_ANSWER, reached after the ready marker, took the one free number so
// that the layout of struct proc did not change.
enum milestone {
	MS_NONE = 0,
	MS_EXEC = 1,
	MS_VM_CREATED = 2,
	MS_MEMORY = 3,
	MS_VCPU = 4,
	MS_GUEST_ENTRY = 5,
	MS_FIRST_OUTPUT = 6,
	MS_ANSWER = 7,
	MS_MARKER = 8,
	MS_EXIT = 72,
	// Any exec after the first: the process exec'd again (a launcher
	// such as volt-jailer's jail process, which execs the VMM last). The
	// latest such exec is kept.
	MS_LAST_EXEC = 73,
	MS_COUNT = 74,
};

// Bits of a launcher's value in `launchers`.
#define LAUNCH_WATCH 1
#define LAUNCH_FOLLOW 2	// the process launched also enrols its first child

#define MARKER_PORT 0x80
#define MARKER_FIRST 0x40
#define MARKER_LAST 0x7f
#define MARKER_READY 0x61
#define MS_READY (MS_MARKER + MARKER_READY - MARKER_FIRST)
#define COM1_THR 0x3f8
#define COM1_LCR 0x3fb
#define LCR_DLAB 0x80

// ioctl numbers: _IO/_IOW(KVMIO = 0xAE, nr[, size]).
#define KVM_CREATE_VM 0xae01
#define KVM_CREATE_VCPU 0xae41
#define KVM_SET_USER_MEMORY_REGION 0x4020ae46
#define KVM_SET_USER_MEMORY_REGION2 0x40a0ae49
#define KVM_RUN 0xae80

struct proc {
	__u64 ts[MS_COUNT];		// first ktime (ns) each milestone was reached; 0 = not yet
	__u32 kvm_exits[MS_COUNT];	// kvm:kvm_exit while this milestone was the latest reached
	__u32 user_exits[MS_COUNT];	// kvm:kvm_userspace_exit, likewise
	__u64 last_thread_exit;		// ktime of the last thread's sched_process_exit
	__u32 latest;			// the milestone most recently reached
	__u32 marker_writes;		// every write to the marker port, repeats included
	__u32 memory_regions;		// successful KVM_SET_USER_MEMORY_REGION(2) calls
	__u32 vcpus;			// successful KVM_CREATE_VCPU calls
	__u32 dlab;			// COM1 divisor latch on: 0x3f8 writes are not output
	__u32 follow;			// its child processes join `procs` at their fork
	__u32 child;			// TGID of the first of them that exec'd; 0 until then
	__u32 parent;			// TGID of the process that enrolled it so; 0 for none
};

// Force the generator to emit Go types for these.
const struct proc *unused_proc __attribute__((unused));
const enum milestone *unused_milestone __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);	// TGID
	__type(value, struct proc);
} procs SEC(".maps");

// Threads (TIDs) whose next forks are launches of processes to trace. User
// space registers a thread for the moment it forks and execs a VMM, so its
// child is in `procs` before the child runs, and the exec that follows is
// timed by the same tracepoint as always. Keyed by thread, not process: the
// launcher's other children (helpers, untraced VMMs) must not join.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);	// TID
	__type(value, __u32);	// LAUNCH_* bits
} launchers SEC(".maps");

// One zeroed struct proc, the initial value of a process that joins at its
// fork (too large for the BPF stack).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proc);
} zero_proc SEC(".maps");

// ioctl command of each traced thread between sys_enter and sys_exit.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);	// TID
	__type(value, __u32);
} pending SEC(".maps");

// Tracepoint records, laid out as /sys/kernel/tracing/events/.../format
// describes them; the 8-byte common header is skipped as one field.
struct sys_enter_ioctl_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 fd;
	__u64 cmd;
	__u64 arg;
};

struct sys_exit_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

struct kvm_pio_args {
	__u64 common;
	__u32 rw;
	__u32 port;
	__u32 size;
	__u32 count;
	__u32 val;
};

static __always_inline struct proc *current_proc(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_lookup_elem(&procs, &tgid);
}

// reach records the first time a milestone is hit; threads race for it,
// so the compare-and-swap keeps the earliest writer.
static __always_inline void reach(struct proc *p, __u32 ms, __u64 now)
{
	if (ms >= MS_COUNT)
		return;
	if (__sync_val_compare_and_swap(&p->ts[ms], 0, now) == 0)
		p->latest = ms;
}

static __always_inline void count_exit(struct proc *p, int user)
{
	__u32 ms = p->latest;
	if (ms >= MS_COUNT)
		return;
	if (user)
		__sync_fetch_and_add(&p->user_exits[ms], 1);
	else
		__sync_fetch_and_add(&p->kvm_exits[ms], 1);
}

SEC("tracepoint/sched/sched_process_exec")
int on_exec(void *ctx)
{
	struct proc *p = current_proc();
	if (!p)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (p->ts[MS_EXEC]) {
		// An exec after the first: the stages that follow are those
		// of the program exec'd last. An exec from a thread other than
		// the leader (Go's, on a locked thread) ended the leader first,
		// and that exit is not the process's end.
		p->ts[MS_EXIT] = 0;
		p->last_thread_exit = 0;
		p->ts[MS_LAST_EXEC] = now;
		p->latest = MS_LAST_EXEC;
		return 0;
	}
	if (p->parent) {
		// A followed child: the first to exec is the parent's child;
		// any other leaves the filter, so nothing is left behind.
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		__u32 ptgid = p->parent;
		struct proc *parent = bpf_map_lookup_elem(&procs, &ptgid);
		if (!parent || __sync_val_compare_and_swap(&parent->child, 0, tgid) != 0) {
			bpf_map_delete_elem(&procs, &tgid);
			return 0;
		}
	}
	reach(p, MS_EXEC, now);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int on_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct proc *p = current_proc();
	if (!p)
		return 0;
	__u32 tid = id;
	bpf_map_delete_elem(&pending, &tid);
	if (p->ts[MS_EXEC] == 0) {
		// A process that ends before its exec never ran the VMM (its
		// exec failed, or the launcher killed it): forget it, so that
		// a failed start leaves no entry behind. Other threads exiting
		// before the exec (those an exec replaces) are not the VMM.
		if ((__u32)id == (__u32)(id >> 32)) {
			__u32 tgid = id >> 32;
			bpf_map_delete_elem(&procs, &tgid);
		}
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	p->last_thread_exit = now;
	if ((__u32)id == (__u32)(id >> 32))
		reach(p, MS_EXIT, now);
	return 0;
}

// The two task_struct fields read, relocated against the running kernel's
// BTF (CO-RE), so no kernel headers are needed.
struct task_struct {
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

// sched_process_fork(parent, child) runs in the parent before the child can
// run: a launcher's new process joins `procs` before it can exec. New
// threads (the launcher's runtime starts them at any time) have a TID that
// is not their TGID and are skipped. A watched process launched with
// LAUNCH_FOLLOW (volt-jailer, whose jail process execs the VMM) enrols its
// child processes the same way; the first of them to exec becomes its
// `child` (on_exec), the others leave the filter at their exec or exit.
// (Not "the first fork": Go's os/exec forks a throw-away child first, to
// probe for clone(CLONE_PIDFD).)
SEC("tp_btf/sched_process_fork")
int on_fork(__u64 *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx[1];
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = id;
	__u32 pid = child->pid;
	if (pid != (__u32)child->tgid)
		return 0;
	__u32 follow = 0, parent_tgid = 0;
	__u32 *flags = bpf_map_lookup_elem(&launchers, &tid);
	if (flags) {
		follow = *flags & LAUNCH_FOLLOW;
	} else {
		parent_tgid = id >> 32;
		struct proc *parent = bpf_map_lookup_elem(&procs, &parent_tgid);
		if (!parent || !parent->follow || parent->child)
			return 0;
	}
	__u32 zero = 0;
	struct proc *init = bpf_map_lookup_elem(&zero_proc, &zero);
	if (!init)
		return 0;
	// BPF_ANY: a recycled PID starts afresh. A full map leaves the child
	// out, which the launcher checks.
	bpf_map_update_elem(&procs, &pid, init, BPF_ANY);
	if (follow || parent_tgid) {
		struct proc *p = bpf_map_lookup_elem(&procs, &pid);
		if (p) {
			p->follow = follow ? 1 : 0;
			p->parent = parent_tgid;
		}
	}
	return 0;
}

static __always_inline int interesting_ioctl(__u32 cmd)
{
	return cmd == KVM_CREATE_VM || cmd == KVM_CREATE_VCPU || cmd == KVM_SET_USER_MEMORY_REGION ||
	       cmd == KVM_SET_USER_MEMORY_REGION2 || cmd == KVM_RUN;
}

SEC("tracepoint/syscalls/sys_enter_ioctl")
int on_ioctl_enter(struct sys_enter_ioctl_args *ctx)
{
	struct proc *p = current_proc();
	if (!p)
		return 0;
	__u32 cmd = ctx->cmd;
	if (!interesting_ioctl(cmd))
		return 0;
	if (cmd == KVM_RUN) {
		// Guest entry is the moment the CPU is handed over, not the return.
		reach(p, MS_GUEST_ENTRY, bpf_ktime_get_ns());
		return 0;
	}
	__u32 tid = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending, &tid, &cmd, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_ioctl")
int on_ioctl_exit(struct sys_exit_args *ctx)
{
	struct proc *p = current_proc();
	if (!p)
		return 0;
	__u32 tid = bpf_get_current_pid_tgid();
	__u32 *cmd = bpf_map_lookup_elem(&pending, &tid);
	if (!cmd)
		return 0;
	__u32 c = *cmd;
	bpf_map_delete_elem(&pending, &tid);
	if (ctx->ret < 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	switch (c) {
	case KVM_CREATE_VM:
		reach(p, MS_VM_CREATED, now);
		break;
	case KVM_SET_USER_MEMORY_REGION:
	case KVM_SET_USER_MEMORY_REGION2:
		__sync_fetch_and_add(&p->memory_regions, 1);
		reach(p, MS_MEMORY, now);
		break;
	case KVM_CREATE_VCPU:
		__sync_fetch_and_add(&p->vcpus, 1);
		reach(p, MS_VCPU, now);
		break;
	}
	return 0;
}

SEC("tracepoint/kvm/kvm_pio")
int on_pio(struct kvm_pio_args *ctx)
{
	struct proc *p = current_proc();
	if (!p)
		return 0;
	if (!ctx->rw)
		return 0;
	__u32 port = ctx->port;
	__u32 val = ctx->val;
	if (port == MARKER_PORT) {
		__sync_fetch_and_add(&p->marker_writes, 1);
		__u32 code = val & 0xff;
		// The mask, redundant after the range check, is what lets the
		// verifier see the index bounded.
		if (code >= MARKER_FIRST && code <= MARKER_LAST)
			reach(p, MS_MARKER + ((code - MARKER_FIRST) & 0x3f), bpf_ktime_get_ns());
	} else if (port == COM1_LCR) {
		p->dlab = val & LCR_DLAB;
	} else if (port == COM1_THR && !p->dlab) {
		__u64 now = bpf_ktime_get_ns();
		reach(p, MS_FIRST_OUTPUT, now);
		// The answer to the first command: the first byte after the
		// guest said it is ready. A restored guest booted in another
		// process and writes no marker in this one, so there its very
		// first byte is the answer.
		if (p->ts[MS_READY] || !p->marker_writes)
			reach(p, MS_ANSWER, now);
	}
	return 0;
}

SEC("tracepoint/kvm/kvm_exit")
int on_kvm_exit(void *ctx)
{
	struct proc *p = current_proc();
	if (p)
		count_exit(p, 0);
	return 0;
}

SEC("tracepoint/kvm/kvm_userspace_exit")
int on_userspace_exit(void *ctx)
{
	struct proc *p = current_proc();
	if (p)
		count_exit(p, 1);
	return 0;
}
