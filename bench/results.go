package bench

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
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram range: 1 µs to 1 h at 3 significant digits. Boots here take
// milliseconds; the hour leaves room for Linux guests under emulation.
const (
	histLowestUS  = 1
	histHighestUS = 3600e6
	histSigFigs   = 3
)

// Format names the JSON layout; readers refuse anything else.
const Format = "voltbench/v1"

// Results is what `--json FILE` writes: one or more runs (one per VMM).
type Results struct {
	Format        string    `json:"format"`
	Created       time.Time `json:"created"`
	Host          string    `json:"host,omitempty"`
	KernelRelease string    `json:"kernel_release,omitempty"`
	Command       string    `json:"command,omitempty"`
	Runs          []*Run    `json:"runs"`
}

// Run holds the boots of one VMM: one histogram per stage.
type Run struct {
	VMM      string   `json:"vmm"`
	Guest    string   `json:"guest"`
	Kernel   string   `json:"kernel,omitempty"`
	Args     []string `json:"args,omitempty"`
	Boots    int      `json:"boots"`
	Failures int      `json:"failures"`
	// Unit names what each of Boots was, for tables: "" means boots;
	// "restores" for runs of snapshot restores.
	Unit   string         `json:"unit,omitempty"`
	Stages []*StageResult `json:"stages"`
}

// StageResult summarises one stage over every successful boot.
type StageResult struct {
	Stage  string  `json:"stage"`
	Count  int64   `json:"count"`
	P50US  float64 `json:"p50_us"`
	P90US  float64 `json:"p90_us"`
	P99US  float64 `json:"p99_us"`
	MaxUS  float64 `json:"max_us"`
	MeanUS float64 `json:"mean_us"`
	// Mean exits during the stage (see StageTime).
	KVMExits  float64 `json:"kvm_exits_mean"`
	UserExits float64 `json:"userspace_exits_mean"`
	// Histogram is the HDR histogram of the stage (µs) in the standard
	// V2 compressed, base64 form, readable by any HdrHistogram library.
	Histogram string `json:"histogram"`

	hist            *hdrhistogram.Histogram
	kvmSum, userSum float64
}

// NewRun starts an empty run with a histogram for every stage of Stages.
func NewRun(vmm, guest string) *Run { return NewRunOf(vmm, guest, Stages) }

// NewRunOf starts an empty run with a histogram for each of stages.
func NewRunOf(vmm, guest string, stages []Stage) *Run {
	r := &Run{VMM: vmm, Guest: guest}
	for _, s := range stages {
		r.Stages = append(r.Stages, &StageResult{Stage: s.Name, hist: newHist()})
	}
	return r
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowestUS, histHighestUS, histSigFigs)
}

// Stage returns the result of the named stage, or nil.
func (r *Run) Stage(name string) *StageResult {
	for _, s := range r.Stages {
		if s.Stage == name {
			return s
		}
	}
	return nil
}

// Add records one boot. Failed boots are counted but not timed, since a
// timed-out boot has no stage times that mean anything.
func (r *Run) Add(b Boot) {
	r.Boots++
	if b.Err != nil {
		r.Failures++
		return
	}
	for _, s := range r.Stages {
		st, ok := b.Stages[s.Stage]
		if !ok {
			continue
		}
		if s.hist == nil {
			s.hist = newHist()
		}
		us := max(st.At.Microseconds(), histLowestUS)
		_ = s.hist.RecordValue(min(us, histHighestUS))
		s.kvmSum += float64(st.KVMExits)
		s.userSum += float64(st.UserExits)
	}
	r.summarise()
}

// summarise refreshes the figures and the encoded histogram of each stage.
func (r *Run) summarise() {
	for _, s := range r.Stages {
		h := s.hist
		if h == nil {
			continue
		}
		s.Count = h.TotalCount()
		if s.Count == 0 {
			continue
		}
		s.P50US = float64(h.ValueAtQuantile(50))
		s.P90US = float64(h.ValueAtQuantile(90))
		s.P99US = float64(h.ValueAtQuantile(99))
		s.MaxUS = float64(h.Max())
		s.MeanUS = math.Round(h.Mean()*10) / 10
		s.KVMExits = math.Round(s.kvmSum/float64(s.Count)*10) / 10
		s.UserExits = math.Round(s.userSum/float64(s.Count)*10) / 10
		enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
		if err == nil {
			s.Histogram = string(enc)
		}
	}
}

// Samples returns the recorded values of a stage in µs, one per boot,
// rebuilt from the histogram (each at the middle of its bucket, within
// 0.1 % of the recorded value). Runs read from a file have nothing else.
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
		r.summarise()
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
	if res.Format != Format {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrBadResults, res.Format, Format)
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
		if r.Unit != "" && r.Unit != "boots" && r.Unit != "restores" {
			return nil, fmt.Errorf("%w: run %s: unit %q is not boots or restores", ErrBadResults, r.VMM, r.Unit)
		}
		if len(r.Stages) > maxStages {
			return nil, fmt.Errorf("%w: run %s: %d stages", ErrBadResults, r.VMM, len(r.Stages))
		}
		seen := map[string]bool{}
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
			s.kvmSum = s.KVMExits * float64(s.Count)
			s.userSum = s.UserExits * float64(s.Count)
		}
	}
	return &res, nil
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
