// Package results is voltbench's record of a session: per arm (a VMM, the
// restores, a floor helper) one HDR histogram per boot stage, its summary
// figures, and the JSON file format (`--json`, the CI baseline) with a
// defensive parser. It knows stage names, not how they are timed.
package results

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/voltvmm/volt/bench/stats"
)

// Histogram range: 1 µs to 1 h at 3 significant digits. Boots here take
// milliseconds; the hour leaves room for Linux guests under emulation.
const (
	histLowestUS  = 1
	histHighestUS = 3600e6
	histSigFigs   = 3
)

// Format names the JSON layout written now. FormatV1 files (before p99 and
// KVM exits could be absent) are still read.
const (
	Format   = "voltbench/v2"
	FormatV1 = "voltbench/v1"
)

// Results is what `--json FILE` writes: one or more runs (one per arm of a
// session: a VMM, the restores, a floor helper, …).
type Results struct {
	Format        string    `json:"format"`
	Created       time.Time `json:"created"`
	Host          string    `json:"host,omitempty"`
	KernelRelease string    `json:"kernel_release,omitempty"`
	Command       string    `json:"command,omitempty"`
	Runs          []*Run    `json:"runs"`
}

// Units of a run, for tables: what each of its Boots was.
const (
	UnitBoots    = "boots"
	UnitRestores = "restores"
	UnitRuns     = "runs" // a floor helper's processes
)

// Run holds the boots of one arm: one histogram per stage.
type Run struct {
	VMM      string   `json:"vmm"` // the arm's name: "volt", "qemu", "restore", "floor-kvm", …
	Guest    string   `json:"guest"`
	Kernel   string   `json:"kernel,omitempty"`
	Args     []string `json:"args,omitempty"`
	Boots    int      `json:"boots"`
	Failures int      `json:"failures"`
	// Unit names what each of Boots was: "" means boots.
	Unit string `json:"unit,omitempty"`
	// Floor marks the run of a floor helper (voltbench floor): the limit
	// the other runs of the session are measured against, not a VMM.
	Floor bool `json:"floor,omitempty"`
	// FloorRun names the run of the same file that is this run's floor:
	// measured interleaved with it, the base of its ×floor ratios.
	FloorRun string `json:"floor_run,omitempty"`
	// Exits over every successful boot of the run, summed over its stages.
	KVMExitsTotal  uint64 `json:"kvm_exits_total"`
	UserExitsTotal uint64 `json:"userspace_exits_total"`
	// KVMExitsNotMeasured says why the run has no KVM exit counts (then
	// every stage's kvm_exits_mean is null): the tracer could not attach
	// kvm:kvm_exit, or it never fired while exits to user space did,
	// which is impossible where it works (every exit to user space is a
	// KVM exit), so it is not emitted on this host.
	KVMExitsNotMeasured string         `json:"kvm_exits_not_measured,omitempty"`
	Stages              []*StageResult `json:"stages"`

	// kvmNote, when set, is why KVM exits were not measured, whatever
	// the totals say: the tracer could not attach, or the file said so.
	kvmNote string
	// stale: boots were added since the figures were last computed.
	// Reading them through Stage, Rows or a file refreshes them, so that
	// a boot costs no histogram walk.
	stale bool
}

// StageResult summarises one stage over every successful boot.
type StageResult struct {
	Stage string  `json:"stage"`
	Count int64   `json:"count"`
	P50US float64 `json:"p50_us"`
	P90US float64 `json:"p90_us"`
	// P99US is there only from stats.TailMinSamples boots on: below that
	// the 99th percentile is the maximum (MaxUS).
	P99US  *float64 `json:"p99_us,omitempty"`
	MaxUS  float64  `json:"max_us"`
	MeanUS float64  `json:"mean_us"`
	// Mean exits during the stage (see StageTime); KVMExits is null when
	// the run did not measure them (Run.KVMExitsNotMeasured).
	KVMExits  *float64 `json:"kvm_exits_mean"`
	UserExits float64  `json:"userspace_exits_mean"`
	// Histogram is the HDR histogram of the stage (µs) in the standard
	// V2 compressed, base64 form, readable by any HdrHistogram library.
	Histogram string `json:"histogram"`

	hist            *hdrhistogram.Histogram
	kvmSum, userSum float64
}

// StageTime is one stage of one boot.
type StageTime struct {
	At time.Duration // since the exec of the VMM
	// Exits during the stage: between the previous stage reached (in time
	// order) and this one.
	KVMExits, UserExits uint32
}

// Observation is what a run records of one boot.
type Observation struct {
	// Failed boots are counted but not timed: a timed-out or crashed
	// boot has no stage times that mean anything.
	Failed bool
	Stages map[string]StageTime
	// KVMExitsUntraced is set when the tracer could not attach
	// kvm:kvm_exit, so the boot's KVM exit counts are not zeros but
	// unknown.
	KVMExitsUntraced bool
}

// NewRun starts an empty run with a histogram for each of the stages, in
// this order.
func NewRun(name, guest string, stages []string) *Run {
	r := &Run{VMM: name, Guest: guest}
	for _, s := range stages {
		r.Stages = append(r.Stages, &StageResult{Stage: s, hist: newHist()})
	}
	return r
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowestUS, histHighestUS, histSigFigs)
}

// Rows returns the stages, their figures up to date.
func (r *Run) Rows() []*StageResult {
	r.refresh()
	return r.Stages
}

func (r *Run) refresh() {
	if r.stale {
		r.summarise(false) // no encoding, so no error
		r.stale = false
	}
}

// Stage returns the result of the named stage, its figures up to date,
// or nil.
func (r *Run) Stage(name string) *StageResult {
	r.refresh()
	for _, s := range r.Stages {
		if s.Stage == name {
			return s
		}
	}
	return nil
}

// StageNames returns the run's stages in order.
func (r *Run) StageNames() []string {
	names := make([]string, len(r.Stages))
	for i, s := range r.Stages {
		names[i] = s.Stage
	}
	return names
}

// UnitName is Unit, with "" read as boots.
func (r *Run) UnitName() string {
	if r.Unit == "" {
		return UnitBoots
	}
	return r.Unit
}

// ErrIncomplete means a boot reported as successful lacks a stage of the
// run: it is counted as a failure, never as a boot with a stage missing.
var ErrIncomplete = errors.New("boot without every stage")

// Add records one boot. A successful boot must carry every stage of the
// run; one that does not is counted as failed and reported (ErrIncomplete),
// because a boot that skipped a stage did not boot as expected, and
// dropping the row silently would time the others on a biased subset.
func (r *Run) Add(o Observation) error {
	r.Boots++
	if o.Failed {
		r.Failures++
		return nil
	}
	var missing []string
	for _, s := range r.Stages {
		if _, ok := o.Stages[s.Stage]; !ok {
			missing = append(missing, s.Stage)
		}
	}
	if len(missing) > 0 {
		r.Failures++
		return fmt.Errorf("%w: %s never reached", ErrIncomplete, strings.Join(missing, ", "))
	}
	for _, s := range r.Stages {
		st := o.Stages[s.Stage]
		if s.hist == nil {
			s.hist = newHist()
		}
		us := max(st.At.Microseconds(), histLowestUS)
		_ = s.hist.RecordValue(min(us, histHighestUS))
		s.kvmSum += float64(st.KVMExits)
		s.userSum += float64(st.UserExits)
		r.KVMExitsTotal += uint64(st.KVMExits)
		r.UserExitsTotal += uint64(st.UserExits)
	}
	if o.KVMExitsUntraced {
		r.kvmNote = "the tracer could not attach kvm:kvm_exit"
	}
	r.stale = true
	return nil
}

// KVMExitsMeasured reports whether the run's KVM exit counts mean
// anything; if not, KVMExitsNote says why.
func (r *Run) KVMExitsMeasured() bool { return r.kvmExitsNote() == "" }

// KVMExitsNote is why the run's KVM exits were not measured, or "".
func (r *Run) KVMExitsNote() string { return r.kvmExitsNote() }

func (r *Run) kvmExitsNote() string {
	switch {
	case r.kvmNote != "":
		return r.kvmNote
	case r.KVMExitsTotal == 0 && r.UserExitsTotal > 0:
		return fmt.Sprintf("kvm:kvm_exit never fired while %d exits to user space did: this host's KVM does not emit it", r.UserExitsTotal)
	}
	return ""
}

// summarise refreshes the figures of each stage and, with encode, its
// encoded histogram (only a file needs that, and compressing every
// histogram after every boot would cost more than the boot's bookkeeping).
func (r *Run) summarise(encode bool) error {
	r.KVMExitsNotMeasured = r.kvmExitsNote()
	for _, s := range r.Stages {
		h := s.hist
		if h == nil {
			continue
		}
		s.Count = h.TotalCount()
		if s.Count == 0 {
			s.P50US, s.P90US, s.P99US, s.MaxUS, s.MeanUS, s.KVMExits, s.UserExits = 0, 0, nil, 0, 0, nil, 0
			s.Histogram = ""
			continue
		}
		s.P50US = float64(h.ValueAtQuantile(50))
		s.P90US = float64(h.ValueAtQuantile(90))
		s.P99US = nil
		if s.Count >= stats.TailMinSamples {
			p99 := float64(h.ValueAtQuantile(99))
			s.P99US = &p99
		}
		s.MaxUS = float64(h.Max())
		s.MeanUS = math.Round(h.Mean()*10) / 10
		s.KVMExits = nil
		if r.KVMExitsNotMeasured == "" {
			kvm := math.Round(s.kvmSum/float64(s.Count)*10) / 10
			s.KVMExits = &kvm
		}
		s.UserExits = math.Round(s.userSum/float64(s.Count)*10) / 10
		if encode {
			enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
			if err != nil {
				return fmt.Errorf("run %s stage %s: encode histogram: %w", r.VMM, s.Stage, err)
			}
			s.Histogram = string(enc)
		}
	}
	return nil
}

// Tail returns the stage's tail figure and its label: the p99 from
// stats.TailMinSamples boots on, else the maximum, named "max".
func (s *StageResult) Tail() (us float64, label string) {
	_, label = stats.Tail(int(s.Count))
	if s.P99US != nil {
		return *s.P99US, label
	}
	return s.MaxUS, label
}

// Samples returns the recorded values of a stage in µs, one per boot,
// rebuilt from the histogram (each at the middle of its bucket, within
// 0.1 % of the recorded value). Runs read from a file have nothing else.
//
// Samples of a stage taken from a Run read the histogram directly and need
// no refresh.
func (s *StageResult) Samples() []float64 {
	if s == nil || s.hist == nil {
		return nil
	}
	var out []float64
	for _, bar := range s.hist.Distribution() {
		mid := float64(bar.From+bar.To) / 2
		for i := int64(0); i < bar.Count; i++ {
			out = append(out, mid)
		}
	}
	return out
}

// Marshal encodes results as indented JSON.
func (res *Results) Marshal() ([]byte, error) {
	res.Format = Format
	for _, r := range res.Runs {
		if err := r.summarise(true); err != nil {
			return nil, fmt.Errorf("encode results: %w", err)
		}
		r.stale = false
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode results: %w", err)
	}
	return append(b, '\n'), nil
}

// Limits on what ParseResults accepts; results files are small.
const (
	maxResultsBytes   = 16 << 20
	maxHistogramChars = 1 << 20
	maxInflatedBytes  = 4 << 20
	maxRuns           = 16
	maxStages         = 64
	maxHistograms     = 256 // ~190 KiB of counts each once decoded
	maxStageCount     = 100_000
	maxNoteBytes      = 1 << 10
)

// ErrBadResults wraps every reason a results file is refused.
var ErrBadResults = errors.New("bad results file")

// ParseResults reads a results file. It is written by voltbench but may be
// edited or damaged, so every field is checked and every histogram decoded
// defensively.
func ParseResults(data []byte) (*Results, error) {
	if len(data) > maxResultsBytes {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadResults, len(data), maxResultsBytes)
	}
	var res Results
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&res); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResults, err)
	}
	if res.Format != Format && res.Format != FormatV1 {
		return nil, fmt.Errorf("%w: format %q, want %q (or %q)", ErrBadResults, res.Format, Format, FormatV1)
	}
	if len(res.Runs) == 0 || len(res.Runs) > maxRuns {
		return nil, fmt.Errorf("%w: %d runs", ErrBadResults, len(res.Runs))
	}
	histograms := 0
	for i, r := range res.Runs {
		if r == nil {
			return nil, fmt.Errorf("%w: run %d is null", ErrBadResults, i)
		}
		if r.VMM == "" {
			return nil, fmt.Errorf("%w: run %d has no vmm", ErrBadResults, i)
		}
		if r.Boots < 0 || r.Failures < 0 || r.Failures > r.Boots {
			return nil, fmt.Errorf("%w: run %s: %d boots, %d failures", ErrBadResults, r.VMM, r.Boots, r.Failures)
		}
		if r.Unit != "" && r.Unit != UnitBoots && r.Unit != UnitRestores && r.Unit != UnitRuns {
			return nil, fmt.Errorf("%w: run %s: unit %q is not boots, restores or runs", ErrBadResults, r.VMM, r.Unit)
		}
		if r.FloorRun != "" && (r.Floor || r.FloorRun == r.VMM) {
			return nil, fmt.Errorf("%w: run %s: a floor run, or its own floor, cannot have a floor", ErrBadResults, r.VMM)
		}
		if len(r.KVMExitsNotMeasured) > maxNoteBytes {
			return nil, fmt.Errorf("%w: run %s: kvm_exits_not_measured of %d bytes", ErrBadResults, r.VMM, len(r.KVMExitsNotMeasured))
		}
		if len(r.Stages) > maxStages {
			return nil, fmt.Errorf("%w: run %s: %d stages", ErrBadResults, r.VMM, len(r.Stages))
		}
		seen := map[string]bool{}
		var kvmSum, userSum float64
		for _, s := range r.Stages {
			if histograms++; histograms > maxHistograms {
				return nil, fmt.Errorf("%w: more than %d stage histograms", ErrBadResults, maxHistograms)
			}
			if s == nil || s.Stage == "" || seen[s.Stage] {
				return nil, fmt.Errorf("%w: run %s: missing, unnamed or repeated stage", ErrBadResults, r.VMM)
			}
			seen[s.Stage] = true
			if s.Count < 0 || s.Count > maxStageCount {
				return nil, fmt.Errorf("%w: run %s stage %s: count %d outside 0–%d", ErrBadResults, r.VMM, s.Stage, s.Count, maxStageCount)
			}
			if s.Histogram == "" {
				if s.Count != 0 {
					return nil, fmt.Errorf("%w: run %s stage %s: count %d without a histogram", ErrBadResults, r.VMM, s.Stage, s.Count)
				}
				s.hist = newHist()
				continue
			}
			h, err := decodeHistogram(s.Histogram)
			if err != nil {
				return nil, fmt.Errorf("%w: run %s stage %s: %w", ErrBadResults, r.VMM, s.Stage, err)
			}
			if h.TotalCount() != s.Count {
				return nil, fmt.Errorf("%w: run %s stage %s: histogram holds %d values, count says %d", ErrBadResults, r.VMM, s.Stage, h.TotalCount(), s.Count)
			}
			s.hist = h
			// Keep the exit means when the run is summarised again.
			if s.KVMExits != nil {
				if !finite(*s.KVMExits) || *s.KVMExits < 0 {
					return nil, fmt.Errorf("%w: run %s stage %s: kvm_exits_mean %v", ErrBadResults, r.VMM, s.Stage, *s.KVMExits)
				}
				s.kvmSum = *s.KVMExits * float64(s.Count)
			}
			if !finite(s.UserExits) || s.UserExits < 0 {
				return nil, fmt.Errorf("%w: run %s stage %s: userspace_exits_mean %v", ErrBadResults, r.VMM, s.Stage, s.UserExits)
			}
			s.userSum = s.UserExits * float64(s.Count)
			kvmSum += s.kvmSum
			userSum += s.userSum
		}
		// Version 1 files have no totals: rebuild them from the means,
		// so that a v1 run whose KVM exits were never seen is n/a too.
		if res.Format == FormatV1 {
			r.KVMExitsTotal, r.UserExitsTotal = uint64(math.Round(kvmSum)), uint64(math.Round(userSum))
		}
		// Whatever made the writer call the exits unmeasured holds for
		// the reader too.
		r.kvmNote = r.KVMExitsNotMeasured
		if err := r.summarise(false); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadResults, err)
		}
	}
	for _, r := range res.Runs {
		if r.FloorRun != "" {
			if f := res.Run(r.FloorRun); f == nil || !f.Floor {
				return nil, fmt.Errorf("%w: run %s: floor run %q is not a floor run of the file", ErrBadResults, r.VMM, r.FloorRun)
			}
		}
	}
	res.Format = Format
	return &res, nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Floors returns, for every run with a floor in the file, that floor.
func (res *Results) Floors() map[string]*Run {
	f := map[string]*Run{}
	for _, r := range res.Runs {
		if r.FloorRun != "" {
			f[r.VMM] = res.Run(r.FloorRun)
		}
	}
	return f
}

// Run returns the first run of the named VMM, or nil.
func (res *Results) Run(vmm string) *Run {
	for _, r := range res.Runs {
		if r.VMM == vmm {
			return r
		}
	}
	return nil
}

// HDR V2 encoding constants (HdrHistogram's published format).
const (
	hdrCompressedCookie = 0x1c849304
	hdrEncodingCookie   = 0x1c849303
	hdrHeaderSize       = 40
)

// decodeHistogram checks an encoded histogram's framing and header before
// handing it to hdrhistogram.Decode, which trusts its input: it slices
// without bounds checks, inflates without a limit and sizes its counts
// array from the header. The recover is a last line of defence for a
// payload that indexes past the counts array.
func decodeHistogram(s string) (h *hdrhistogram.Histogram, err error) {
	if len(s) > maxHistogramChars {
		return nil, fmt.Errorf("histogram: %d characters, at most %d", len(s), maxHistogramChars)
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("histogram: %w", err)
	}
	if len(raw) < 8 {
		return nil, errors.New("histogram: shorter than its header")
	}
	cookie := binary.BigEndian.Uint32(raw[0:4]) &^ 0xf0
	n := binary.BigEndian.Uint32(raw[4:8])
	if cookie != hdrCompressedCookie {
		return nil, fmt.Errorf("histogram: cookie %#x is not HDR V2 compressed", cookie)
	}
	if uint64(n) > uint64(len(raw)-8) {
		return nil, fmt.Errorf("histogram: claims %d compressed bytes, has %d", n, len(raw)-8)
	}
	zr, err := zlib.NewReader(bytes.NewReader(raw[8 : 8+n]))
	if err != nil {
		return nil, fmt.Errorf("histogram: %w", err)
	}
	inflated, err := io.ReadAll(io.LimitReader(zr, maxInflatedBytes+1))
	if err != nil {
		return nil, fmt.Errorf("histogram: inflate: %w", err)
	}
	if len(inflated) > maxInflatedBytes {
		return nil, fmt.Errorf("histogram: inflates past %d bytes", maxInflatedBytes)
	}
	if len(inflated) < hdrHeaderSize {
		return nil, errors.New("histogram: inflated header too short")
	}
	be := binary.BigEndian
	if c := be.Uint32(inflated[0:4]) &^ 0xf0; c != hdrEncodingCookie {
		return nil, fmt.Errorf("histogram: inner cookie %#x", c)
	}
	if pl := int64(int32(be.Uint32(inflated[4:8]))); pl != int64(len(inflated)-hdrHeaderSize) {
		return nil, fmt.Errorf("histogram: payload length %d, has %d", pl, len(inflated)-hdrHeaderSize)
	}
	sig := int32(be.Uint32(inflated[12:16]))
	lowest := int64(be.Uint64(inflated[16:24]))
	highest := int64(be.Uint64(inflated[24:32]))
	if sig < 1 || sig > histSigFigs || lowest < 1 || lowest > histHighestUS || highest < 2*lowest || highest > histHighestUS {
		return nil, fmt.Errorf("histogram: range %d–%d at %d digits is not one voltbench writes", lowest, highest, sig)
	}
	defer func() {
		if r := recover(); r != nil {
			h, err = nil, fmt.Errorf("histogram: malformed counts: %v", r)
		}
	}()
	h, err = hdrhistogram.Decode([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("histogram: %w", err)
	}
	if h.TotalCount() < 0 {
		return nil, errors.New("histogram: negative total count")
	}
	return h, nil
}
