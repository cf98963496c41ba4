package report

import (
	"bytes"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/results/resultstest"
)

// fixed builds a run of n boots with the given stage times (µs), each boot
// the same, so that every figure is known exactly.
func fixed(t *testing.T, name string, n int, us map[string]int, kvmExits uint32) *results.Run {
	t.Helper()
	var names []string
	for _, s := range []string{"vmm-ready", "guest-entry", "pid1", "exit"} {
		if _, ok := us[s]; ok {
			names = append(names, s)
		}
	}
	r := results.NewRun(name, "probe", names)
	for i := 0; i < n; i++ {
		o := results.Observation{Stages: map[string]results.StageTime{}}
		for s, v := range us {
			o.Stages[s] = results.StageTime{At: time.Duration(v) * time.Microsecond, UserExits: 2, KVMExits: kvmExits}
		}
		if err := r.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestTableShowsTheDistanceToTheFloor(t *testing.T) {
	run := fixed(t, "volt", 20, map[string]int{"vmm-ready": 2000, "guest-entry": 3000, "pid1": 4500, "exit": 9000}, 0)
	floor := fixed(t, "floor-kvm", 20, map[string]int{"vmm-ready": 500, "guest-entry": 1000, "pid1": 1500}, 0)
	floor.Floor = true
	var buf bytes.Buffer
	if err := WriteTable(&buf, run, floor); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	t.Logf("\n%s", out)
	for _, want := range []string{
		"floor p50", "p50 ×floor", "floor max", "max ×floor",
		"4.00×", // vmm-ready 2000/500
		"3.00×", // guest-entry, pid1
		"floor-kvm (20 boots, 0 failed)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	exit := lineOf(out, "exit")
	if strings.Count(exit, "-") < 4 {
		t.Errorf("exit has no floor but shows one: %q", exit)
	}
}

func TestTableNamesItsTailHonestly(t *testing.T) {
	for _, c := range []struct {
		n       int
		p99     bool
		maxNote bool
	}{{20, false, true}, {100, true, false}} {
		var buf bytes.Buffer
		WriteTable(&buf, resultstest.Run("volt", c.n, 1, 1), nil)
		head := lineOf(buf.String(), "stage")
		if strings.Contains(head, "p99") != c.p99 || !strings.Contains(head, "max") {
			t.Errorf("%d boots: header %q, want p99 column %v and max", c.n, head, c.p99)
		}
		if strings.Contains(buf.String(), "no p99") != c.maxNote {
			t.Errorf("%d boots: note about the missing p99 %v, want %v:\n%s", c.n, !c.maxNote, c.maxNote, buf.String())
		}
	}
}

func TestTablePrintsNAForUnmeasuredKVMExits(t *testing.T) {
	silent := fixed(t, "volt", 3, map[string]int{"pid1": 4500}, 0)
	measured := fixed(t, "volt", 3, map[string]int{"pid1": 4500}, 7)
	for _, c := range []struct {
		run  *results.Run
		want string
		note bool
	}{{silent, "n/a", true}, {measured, "7.0", false}} {
		var buf bytes.Buffer
		WriteTable(&buf, c.run, nil)
		fields := strings.Fields(lineOf(buf.String(), "pid1"))
		if got := fields[len(fields)-1]; got != c.want {
			t.Errorf("kvm exits %q, want %q:\n%s", got, c.want, buf.String())
		}
		if strings.Contains(buf.String(), "kvm exits n/a:") != c.note {
			t.Errorf("note on unmeasured exits: want %v:\n%s", c.note, buf.String())
		}
	}
}

func TestCompareAndFloors(t *testing.T) {
	volt := fixed(t, "volt", 10, map[string]int{"vmm-ready": 2000, "pid1": 4000}, 0)
	qemu := fixed(t, "qemu", 10, map[string]int{"vmm-ready": 10000, "pid1": 20000}, 0)
	floor := fixed(t, "floor-kvm", 10, map[string]int{"vmm-ready": 1000, "pid1": 1000}, 0)
	floor.Floor = true
	exec := fixed(t, "floor-exec-c", 10, map[string]int{"exit": 700}, 0)
	exec.Floor = true
	var buf bytes.Buffer
	if err := WriteCompare(&buf, []string{"vmm-ready", "pid1"}, []*results.Run{volt, qemu}, Floors{"volt": floor, "qemu": floor}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	t.Logf("\n%s", out)
	pid1 := strings.Fields(lineOf(out, "pid1"))
	// p50 volt, qemu, ratio; max volt, qemu, ratio; ×floor volt, qemu
	// (HDR histograms keep 3 digits: 4 ms reads back as 4.001).
	if len(pid1) != 9 || pid1[3] != "5.00×" || pid1[6] != "5.00×" || pid1[7] != "4.00×" || !strings.HasPrefix(pid1[8], "20.0") {
		t.Errorf("pid1 row %q, want ratios 5.00× at p50 and max, 4.00× and 20.0× to the floor", pid1)
	}
	if strings.Contains(out, "p99") {
		t.Errorf("a p99 of 10 boots:\n%s", out)
	}
	buf.Reset()
	if err := WriteFloors(&buf, exec, floor); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", buf.String())
	if e := strings.Fields(lineOf(buf.String(), "exit")); len(e) != 3 || e[1] != "0.700" {
		t.Errorf("exit row of the floors %q: want the exec floor's 0.700 only", e)
	}
	if err := WriteCompare(&buf, nil, []*results.Run{volt}, nil); err == nil {
		t.Error("compare of one run accepted")
	}
}

// svgDoc is the part of the SVG the tests read back.
type svgDoc struct {
	XMLName xml.Name   `xml:"svg"`
	Texts   []string   `xml:"text"`
	Groups  []svgGroup `xml:"g"`
}

type svgGroup struct {
	Texts     []string `xml:"text"`
	Polylines []struct {
		Stroke string `xml:"stroke,attr"`
		Dash   string `xml:"stroke-dasharray,attr"`
		Points string `xml:"points,attr"`
	} `xml:"polyline"`
}

func TestCDFIsAWellFormedSVGWithTheFloorMarked(t *testing.T) {
	volt := resultstest.Run(`volt <"&'>`, 30, 1, 1)
	floor := resultstest.Run("floor-kvm", 30, 0.3, 2)
	floor.Floor = true
	var buf bytes.Buffer
	rows := append(volt.StageNames(), "no-such-stage")
	if err := WriteCDF(&buf, CDFFigure("boot\x00 test", rows, []*results.Run{floor, volt})); err != nil {
		t.Fatal(err)
	}
	var doc svgDoc
	if err := xml.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("not well-formed XML: %v", err)
	}
	if len(doc.Groups) != len(volt.Stages) {
		t.Fatalf("%d panels, want %d (one per stage with samples)", len(doc.Groups), len(volt.Stages))
	}
	for i, g := range doc.Groups {
		if len(g.Polylines) != 2 {
			t.Fatalf("panel %d: %d curves, want 2", i, len(g.Polylines))
		}
		// The floor is drawn first, dashed; the run solid.
		if g.Polylines[0].Dash == "" || g.Polylines[1].Dash != "" {
			t.Errorf("panel %d: dashes %q, %q", i, g.Polylines[0].Dash, g.Polylines[1].Dash)
		}
		// A step CDF of 30 samples: a start, two points per sample, an end.
		if n := len(strings.Fields(g.Polylines[1].Points)); n != 2*30+2 {
			t.Errorf("panel %d: %d points", i, n)
		}
		joined := strings.Join(g.Texts, "|")
		if !strings.Contains(joined, "× floor") || !strings.Contains(joined, "ms since exec") {
			t.Errorf("panel %d texts %q", i, joined)
		}
	}
	if !strings.Contains(strings.Join(doc.Texts, "|"), `volt <"&'>`) {
		t.Errorf("legend lost the run's name: %q", doc.Texts)
	}
	// Nothing to plot is still a document.
	buf.Reset()
	if err := WriteCDF(&buf, CDFFigure("empty", nil, nil)); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("empty figure: %v", err)
	}
}

func TestAxes(t *testing.T) {
	lin := newAxis(2, 5)
	if lin.log || lin.lo > 2 || lin.hi < 5 || lin.frac(lin.lo) != 0 || lin.frac(lin.hi) != 1 {
		t.Errorf("2–5 ms: %+v", lin)
	}
	lg := newAxis(0.3, 40)
	if !lg.log || lg.lo != 0.2 || lg.hi != 50 {
		t.Errorf("0.3–40 ms: %+v, want log 0.2–50", lg)
	}
	var labels []string
	for _, tk := range lg.ticks() {
		labels = append(labels, tk.label)
	}
	if got := strings.Join(labels, " "); got != "0.2 0.5 1 2 5 10 20 50" {
		t.Errorf("log ticks %q", got)
	}
	for _, c := range []struct{ in, want float64 }{{0.7, 1}, {1.2, 2}, {3, 5}, {6, 10}, {0.013, 0.02}} {
		if got := niceStep(c.in); got != c.want {
			t.Errorf("niceStep(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func lineOf(out, first string) string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == first {
			return l
		}
	}
	return ""
}

var _ io.Writer = (*bytes.Buffer)(nil)

// Each run's distance in the plot is to its own floor, as in the tables.
func TestCDFRatiosAreToEachRunsOwnFloor(t *testing.T) {
	cold := fixed(t, "cold-boot", 5, map[string]int{"pid1": 4000}, 0)
	restore := fixed(t, "restore", 5, map[string]int{"pid1": 3000}, 0)
	f1 := fixed(t, "floor-kvm", 5, map[string]int{"pid1": 1000}, 0)
	f2 := fixed(t, "floor-kvm-answer", 5, map[string]int{"pid1": 500}, 0)
	f1.Floor, f2.Floor = true, true
	cold.FloorRun, restore.FloorRun = f1.VMM, f2.VMM
	var buf bytes.Buffer
	if err := WriteCDF(&buf, CDFFigure("t", []string{"pid1"}, []*results.Run{f1, cold, f2, restore})); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cold-boot 4.00 ms (4.0× floor)", "restore 3.00 ms (6.0× floor)"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("plot lacks %q", want)
		}
	}
}

func TestCDFOfManySamplesStaysSmall(t *testing.T) {
	r := resultstest.Run("volt", 3*maxSteps/2, 1, 9)
	var buf bytes.Buffer
	if err := WriteCDF(&buf, CDFFigure("many", []string{"pid1"}, []*results.Run{r})); err != nil {
		t.Fatal(err)
	}
	var doc svgDoc
	if err := xml.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	pts := strings.Fields(doc.Groups[0].Polylines[0].Points)
	if len(pts) > 2*maxSteps+2 || len(pts) < maxSteps {
		t.Errorf("%d points for %d samples, want about %d", len(pts), 3*maxSteps/2, 2*maxSteps)
	}
	// The curve still ends at 1 at the largest sample.
	last := pts[len(pts)-2]
	if !strings.HasSuffix(last, ","+strings.Split(pts[len(pts)-1], ",")[1]) {
		t.Errorf("curve does not reach 1 at the last sample: %s then %s", last, pts[len(pts)-1])
	}
}

// Stage by stage, each run on its own line with its ratios to the first;
// a stage a run lacks is a dash, not a zero.
func TestByStageRatiosAreToTheFirstRun(t *testing.T) {
	a := fixed(t, "restore", 5, map[string]int{"vmm-ready": 2000, "exit": 10000}, 0)
	b := fixed(t, "restore-jailed", 5, map[string]int{"vmm-ready": 3000, "exit": 15000}, 0)
	var buf bytes.Buffer
	if err := WriteByStage(&buf, []string{"vmm-ready", "pid1", "exit"}, []*results.Run{a, b}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"restore 5/5 ok, restore-jailed 5/5 ok", "1.50×", "15.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var pid1 []string
	for _, l := range lines {
		if strings.Contains(l, "pid1") {
			pid1 = strings.Fields(l)
		}
	}
	if len(pid1) != 9 || pid1[3] != "-" {
		t.Errorf("pid1 (in neither run): %q", pid1)
	}
	if err := WriteByStage(&buf, nil, []*results.Run{a}); err == nil {
		t.Error("one run compared with nothing")
	}
}
