package report

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/voltvmm/volt/bench/results"
)

// Series is one distribution in a panel: a run's samples of one stage.
type Series struct {
	Name  string
	MS    []float64 // samples in milliseconds, any order
	Floor bool      // a floor helper's: drawn dashed, its median marked
	Color string    // SVG colour; one per run, the same in every panel
	Dash  string    // SVG stroke-dasharray, "" for solid
	// FloorOf is the series (by Name) of this run's floor, whose median
	// its own is divided by; "" when the run names none.
	FloorOf string
}

// Panel is one stage: the CDFs of every run that has it.
type Panel struct {
	Title  string
	Series []Series
}

// Figure is a grid of panels with one legend.
type Figure struct {
	Title, Subtitle string
	Panels          []Panel
	Legend          []Series // one entry per run, in the runs' order
}

// Colours of the runs (not floors), in order, and of the floors: distinct
// for readers with the common colour-vision deficiencies (Okabe–Ito).
var (
	runColors   = []string{"#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"}
	floorColors = []string{"#000000", "#666666", "#999999", "#444444"}
	floorDashes = []string{"6 3", "2 3", "8 3 2 3", "4 4"}
)

// CDFFigure builds one panel per row from runs: each run's samples of that
// stage, floor runs (results.Run.Floor) dashed. Runs without the stage, or
// without samples of it, are left out of its panel. A figure of floors
// alone (voltbench floor) draws them as runs: they are its subject.
func CDFFigure(title string, rows []string, runs []*results.Run) Figure {
	fig := Figure{Title: title}
	style := map[*results.Run]Series{}
	onlyFloors := true
	for _, r := range runs {
		onlyFloors = onlyFloors && r.Floor
	}
	var nRun, nFloor int
	for _, r := range runs {
		s := Series{Name: r.VMM, Floor: r.Floor && !onlyFloors}
		if s.Floor {
			s.Color, s.Dash = floorColors[nFloor%len(floorColors)], floorDashes[nFloor%len(floorDashes)]
			s.Name += " (floor)"
			nFloor++
		} else {
			s.Color = runColors[nRun%len(runColors)]
			nRun++
		}
		style[r] = s
		fig.Legend = append(fig.Legend, s)
	}
	for _, r := range runs {
		if r.FloorRun == "" || onlyFloors {
			continue
		}
		for _, f := range runs {
			if f.VMM == r.FloorRun && f.Floor {
				s := style[r]
				s.FloorOf = style[f].Name
				style[r] = s
			}
		}
	}
	var counts []string
	for _, r := range runs {
		counts = append(counts, fmt.Sprintf("%s %d/%d", r.VMM, r.Boots-r.Failures, r.Boots))
	}
	fig.Subtitle = "fraction of successful boots at or below each time since exec; successful/all: " + strings.Join(counts, ", ")
	for _, name := range rows {
		p := Panel{Title: name}
		for _, r := range runs {
			st := r.Stage(name)
			if st == nil || st.Count == 0 {
				continue
			}
			s := style[r]
			for _, us := range st.Samples() {
				s.MS = append(s.MS, us/1000)
			}
			p.Series = append(p.Series, s)
		}
		if len(p.Series) > 0 {
			fig.Panels = append(fig.Panels, p)
		}
	}
	return fig
}

// Layout of the SVG, in px.
const (
	panelW, panelH   = 400, 270
	plotL, plotR     = 58, 14 // margins inside a panel
	plotT, plotB     = 30, 62
	cols             = 3
	headerH          = 64
	legendRowH       = 18
	legendColW       = 300
	fontFamily       = "DejaVu Sans, Liberation Sans, Arial, sans-serif"
	logScaleMinRatio = 8 // log x when the panel's largest sample is this many times its smallest
	maxSteps         = 1000
)

// WriteCDF draws the figure as a self-contained SVG document: per panel, an
// empirical CDF per series (steps at each sample), x in ms, linear or
// logarithmic as the panel's range needs, y the fraction of boots; floors
// dashed with a vertical line at their median; per series its p50 under the
// panel, and for runs with a floor their p50 over the floor's.
func WriteCDF(w io.Writer, fig Figure) error {
	bw := bufio.NewWriter(w)
	ncols := min(cols, max(len(fig.Panels), 1))
	nrows := (len(fig.Panels) + ncols - 1) / ncols
	legendCols := max(1, ncols*panelW/legendColW)
	legendRows := (len(fig.Legend) + legendCols - 1) / legendCols
	top := headerH + legendRows*legendRowH
	width := ncols * panelW
	height := top + max(nrows, 1)*panelH + 10
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="%s" font-size="12">`+"\n",
		width, height, width, height, fontFamily)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(bw, `<text x="12" y="24" font-size="17" font-weight="bold">%s</text>`+"\n", esc(fig.Title))
	fmt.Fprintf(bw, `<text x="12" y="44" font-size="12" fill="#333333">%s</text>`+"\n", esc(fig.Subtitle))
	for i, s := range fig.Legend {
		x := 12 + (i%legendCols)*legendColW
		y := headerH + (i/legendCols)*legendRowH
		fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5"%s/>`, x, y-4, x+28, y-4, s.Color, dashAttr(s.Dash))
		fmt.Fprintf(bw, `<text x="%d" y="%d">%s</text>`+"\n", x+34, y, esc(s.Name))
	}
	if len(fig.Panels) == 0 {
		fmt.Fprintf(bw, `<text x="12" y="%d">no successful boots to plot</text>`+"\n", top+20)
	}
	for i, p := range fig.Panels {
		writePanel(bw, p, (i%ncols)*panelW, top+(i/ncols)*panelH)
	}
	fmt.Fprintln(bw, "</svg>")
	return bw.Flush()
}

func writePanel(w *bufio.Writer, p Panel, ox, oy int) {
	x0, x1 := float64(ox+plotL), float64(ox+panelW-plotR)
	y0, y1 := float64(oy+plotT), float64(oy+panelH-plotB) // top, bottom of the plot area
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range p.Series {
		for _, v := range s.MS {
			if v > 0 && !math.IsInf(v, 0) && !math.IsNaN(v) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 0.001, 1
	}
	ax := newAxis(lo, hi)
	xAt := func(v float64) float64 { return x0 + ax.frac(v)*(x1-x0) }
	yAt := func(f float64) float64 { return y1 - f*(y1-y0) }

	fmt.Fprintf(w, `<g>`+"\n")
	fmt.Fprintf(w, `<text x="%d" y="%d" font-size="14" font-weight="bold">%s</text>`+"\n", ox+plotL, oy+plotT-10, esc(p.Title))
	// Grid and axes.
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 0.9, 1} {
		y := yAt(f)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e3e3e3"/>`, x0, y, x1, y)
		fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="end" font-size="10">%s</text>`+"\n", x0-4, y+3, strconv.FormatFloat(f, 'f', -1, 64))
	}
	for _, t := range ax.ticks() {
		x := xAt(t.v)
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e3e3e3"/>`, x, y0, x, y1)
		if t.label != "" {
			fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", x, y1+13, t.label)
		}
	}
	fmt.Fprintf(w, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888888"/>`+"\n", x0, y0, x1-x0, y1-y0)
	scale := "linear"
	if ax.log {
		scale = "log scale"
	}
	fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11">ms since exec (%s)</text>`+"\n", (x0+x1)/2, y1+27, scale)
	fmt.Fprintf(w, `<text transform="translate(%d %.1f) rotate(-90)" text-anchor="middle" font-size="11">fraction ≤ x</text>`+"\n", ox+14, (y0+y1)/2)

	// Curves: floors first, under the runs.
	ordered := slices.Clone(p.Series)
	slices.SortStableFunc(ordered, func(a, b Series) int {
		if a.Floor == b.Floor {
			return 0
		}
		if a.Floor {
			return -1
		}
		return 1
	})
	for _, s := range ordered {
		xs := slices.Clone(s.MS)
		slices.Sort(xs)
		if len(xs) == 0 {
			continue
		}
		n := float64(len(xs))
		var pts strings.Builder
		fmt.Fprintf(&pts, "%.1f,%.1f", xAt(xs[0]), yAt(0))
		// A step per sample up to maxSteps; beyond, a step every n/maxSteps
		// ranks (always the last): the curve stays within 1/maxSteps of
		// the CDF, far below a pixel, and the file stays small.
		stride := max(1, (len(xs)+maxSteps-1)/maxSteps)
		for i := 0; i < len(xs); i += stride {
			j := min(i+stride, len(xs)) - 1
			x := xAt(xs[j])
			fmt.Fprintf(&pts, " %.1f,%.1f %.1f,%.1f", x, yAt(float64(i)/n), x, yAt(float64(j+1)/n))
		}
		fmt.Fprintf(&pts, " %.1f,%.1f", x1, yAt(1))
		width := 2.0
		if s.Floor {
			width = 1.6
			// The floor's median, across the panel: where the limit lies.
			m := xAt(median(xs))
			fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1" stroke-dasharray="1 3"/>`+"\n", m, y0, m, y1, s.Color)
		}
		fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="%.1f"%s points="%s"/>`+"\n", s.Color, width, dashAttr(s.Dash), pts.String())
	}
	// Medians under the plot, with each run's distance to its floor: the
	// one it names, or the panel's only floor.
	floorMed := map[string]float64{}
	var floors []string
	for _, s := range p.Series {
		if s.Floor && len(s.MS) > 0 {
			floorMed[s.Name] = median(s.MS)
			floors = append(floors, s.Name)
		}
	}
	var parts []string
	for _, s := range p.Series {
		if len(s.MS) == 0 {
			continue
		}
		m := median(s.MS)
		part := fmt.Sprintf("%s %s", strings.TrimSuffix(s.Name, " (floor)"), fmtMS(m))
		of := s.FloorOf
		if of == "" && len(floors) == 1 {
			of = floors[0]
		}
		if f := floorMed[of]; !s.Floor && f > 0 {
			part += fmt.Sprintf(" (%.1f× floor)", m/f)
		}
		parts = append(parts, part)
	}
	lines := wrap(append([]string{"p50:"}, parts...), 64)
	for i, l := range lines[:min(len(lines), 2)] {
		fmt.Fprintf(w, `<text x="%d" y="%.1f" font-size="10" fill="#333333">%s</text>`+"\n", ox+plotL-40, y1+42+float64(12*i), esc(l))
	}
	fmt.Fprintln(w, `</g>`)
}

// median is the nearest-rank median, the sample at rank ⌈n/2⌉: the one
// the tables' p50 (an HDR histogram's) reports too.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)+1)/2-1]
}

func fmtMS(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

// axis maps values (ms) to [0, 1], linear or log10.
type axis struct {
	lo, hi float64
	log    bool
}

func newAxis(lo, hi float64) axis {
	if hi/lo >= logScaleMinRatio {
		// Whole 1-2-5 steps around the data.
		return axis{lo: stepBelow(lo), hi: stepAbove(hi), log: true}
	}
	span := hi - lo
	if span <= 0 {
		span = math.Max(hi*0.1, 0.001)
	}
	step := niceStep(span / 5)
	l := math.Floor((lo-span*0.05)/step) * step
	if l < 0 {
		l = 0
	}
	return axis{lo: l, hi: math.Ceil((hi+span*0.05)/step) * step}
}

func (a axis) frac(v float64) float64 {
	if a.log {
		v = math.Max(v, a.lo)
		return (math.Log10(v) - math.Log10(a.lo)) / (math.Log10(a.hi) - math.Log10(a.lo))
	}
	return (v - a.lo) / (a.hi - a.lo)
}

type tick struct {
	v     float64
	label string
}

func (a axis) ticks() []tick {
	var out []tick
	if a.log {
		decades := math.Log10(a.hi) - math.Log10(a.lo)
		for e := math.Floor(math.Log10(a.lo)); e <= math.Ceil(math.Log10(a.hi)); e++ {
			for _, m := range []float64{1, 2, 5} {
				v := m * math.Pow(10, e)
				if v < a.lo*0.999 || v > a.hi*1.001 {
					continue
				}
				label := trimNum(v)
				if decades > 3 && m != 1 {
					label = "" // a grid line only, or the labels collide
				}
				out = append(out, tick{v, label})
			}
		}
		return out
	}
	step := niceStep((a.hi - a.lo) / 5)
	for v := a.lo; v <= a.hi+step*1e-9; v += step {
		out = append(out, tick{v, trimNum(v)})
	}
	return out
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x*0.999 {
			return m * p
		}
	}
	return 10 * p
}

func stepBelow(x float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{5, 2, 1} {
		if m*p <= x {
			return m * p
		}
	}
	return p
}

func stepAbove(x float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

func trimNum(v float64) string {
	s := strconv.FormatFloat(v, 'f', 6, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" || s == "-0" {
		return "0"
	}
	return s
}

func dashAttr(d string) string {
	if d == "" {
		return ""
	}
	return fmt.Sprintf(` stroke-dasharray="%s"`, d)
}

// wrap joins parts with ", " into lines of at most n runes, breaking only
// between parts (the first part, a label, is followed by a space).
func wrap(parts []string, n int) []string {
	var lines []string
	cur := ""
	for i, p := range parts {
		sep := ", "
		if i == 1 {
			sep = " "
		}
		switch {
		case cur == "":
			cur = p
		case len([]rune(cur))+len(sep)+len([]rune(p)) > n:
			lines = append(lines, cur+strings.TrimSpace(sep))
			cur = p
		default:
			cur += sep + p
		}
	}
	if cur != "" {
		lines = append(lines, cur)
	}
	return lines
}

// esc escapes text for SVG (XML) content and attributes, and drops what XML
// cannot carry at all (control characters, invalid UTF-8): names come from
// results files, which may be edited.
func esc(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '&':
			b.WriteString("&amp;")
		case r == '<':
			b.WriteString("&lt;")
		case r == '>':
			b.WriteString("&gt;")
		case r == '"':
			b.WriteString("&quot;")
		case r == '\'':
			b.WriteString("&apos;")
		case r == '\t' || r == '\n' || r == '\r':
			b.WriteByte(' ')
		case r < 0x20 || r == 0xfffd || (r >= 0xfffe && r <= 0xffff):
			// invalid in XML 1.0
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
