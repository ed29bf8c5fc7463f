package report

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// series is one line of a plot.
type series struct {
	name  string
	color string
	pts   []Point
}

const (
	plotW, plotH           = 560, 300
	padL, padR, padT, padB = 60, 20, 30, 45
)

// lineChart draws series as an SVG line chart with axes and a legend.
// Marks (phase starts) are numbered on the plot; their labels are listed
// under it, so that they never overlap the title or each other. exactX
// ends the x axis at the last point (a run's end) instead of a round
// number past it.
func lineChart(title, xLabel, yLabel string, ss []series, marks []Mark, exactX bool, width int) template.HTML {
	var xmax, ymax float64
	for _, s := range ss {
		for _, p := range s.pts {
			xmax, ymax = math.Max(xmax, p.X), math.Max(ymax, p.Y)
		}
	}
	if xmax == 0 {
		xmax = 1
	}
	if ymax == 0 {
		ymax = 1
	}
	if !exactX {
		xmax = niceCeil(xmax)
	}
	ymax = niceCeil(ymax)
	if width <= 0 {
		width = plotW
	}
	iw, ih := float64(width-padL-padR), float64(plotH-padT-padB)
	px := func(x float64) float64 { return padL + x/xmax*iw }
	py := func(y float64) float64 { return padT + ih - y/ymax*ih }
	var b bytes.Buffer
	fmt.Fprintf(&b, `<div><svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`, width, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="16" font-size="13" font-weight="bold">%s</text>`, padL, template.HTMLEscapeString(title))
	for i := 0; i <= 4; i++ {
		y := ymax * float64(i) / 4
		x := xmax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`, padL, px(xmax), py(y), py(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`, padL-5, py(y)+4, num(y))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`, px(x), plotH-padB+15, num(x))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`, padL+iw/2, plotH-8, template.HTMLEscapeString(xLabel))
	fmt.Fprintf(&b, `<text transform="translate(14 %.1f) rotate(-90)" text-anchor="middle">%s</text>`, padT+ih/2, template.HTMLEscapeString(yLabel))
	for i, m := range marks {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#bbb" stroke-dasharray="3 3"/>`, px(m.At), px(m.At), padT, padT+ih)
		// Numbers alternate between two rows so that close marks do not collide.
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="9" fill="#555">%d</text>`, px(m.At)+2, padT+9+(i%2)*10, i+1)
	}
	for i, s := range ss {
		var pts []string
		for _, p := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p.X), py(p.Y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.8" points="%s"/>`, s.color, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="12" height="3" fill="%s"/><text x="%.1f" y="%d">%s</text>`,
			px(xmax)-110, padT+6+i*14, s.color, px(xmax)-94, padT+10+i*14, template.HTMLEscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	if len(marks) > 0 {
		b.WriteString(`<ol class="marks">`)
		for _, m := range marks {
			fmt.Fprintf(&b, `<li>%s (%.0f s)</li>`, template.HTMLEscapeString(m.Label), m.At)
		}
		b.WriteString(`</ol>`)
	}
	b.WriteString(`</div>`)
	return template.HTML(b.String())
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func num(v float64) string {
	switch {
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	case v < 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

var page = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>emailproxy bench {{.R.Started.Format "2006-01-02 15:04"}}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
th{white-space:normal;vertical-align:bottom;font-weight:normal}table{margin-bottom:1em}
.plots{display:flex;flex-wrap:wrap;gap:12px}pre{white-space:pre-wrap;font-size:12px}.marks{font-size:12px;columns:3;margin-top:0}</style></head><body>
<h1>emailproxy bench</h1>
<p>{{.R.Started.Format "2006-01-02 15:04 MST"}} · {{.R.Machine.CPU}}, {{.R.Machine.Cores}} cores · {{.R.Machine.Kernel}} · {{.R.Machine.Go}}</p>
<p>{{range $k, $v := .R.Settings}}<b>{{$k}}</b> {{$v}} · {{end}}</p>
<h2>Results</h2>{{.Results}}{{if .Rest}}<pre>{{.Rest}}</pre>{{end}}
{{range .Plots}}<h2>{{.Title}}</h2><div class="plots">{{range .Charts}}{{.}}{{end}}</div>{{end}}
</body></html>
`))

type plotGroup struct {
	Title  string
	Charts []template.HTML
}

// WriteHTML writes a self-contained page: the table and, per scenario,
// the cycle-latency distribution and the throughput over time, direct
// against proxy, then the proxy's memory over the run.
func (rep *Report) WriteHTML(w io.Writer) error {
	var rest bytes.Buffer // idle and abuse figures, as in the terminal
	rep.writeIdle(&rest)
	rep.writeAbuse(&rest)
	rep.writeFleet(&rest)
	var groups []plotGroup
	for _, r := range rep.Results {
		var lat, thr []series
		add := func(name, color string, m *Mode) {
			if m == nil {
				return
			}
			lat = append(lat, series{name, color, m.CDF})
			thr = append(thr, series{name, color, m.Throughput})
		}
		add("direct", "#1f77b4", r.Direct)
		add("proxy", "#d62728", r.Proxy)
		groups = append(groups, plotGroup{Title: r.Scenario, Charts: []template.HTML{
			lineChart(r.Scenario+": cycle latency distribution", "cycle latency (ms)", "fraction of cycles", lat, nil, false, 0),
			lineChart(r.Scenario+": completed cycles per second", "time (s)", "cycles/s", thr, nil, true, 0),
		}})
	}
	if len(rep.ProxyMemory) > 0 {
		mem := make([]Point, len(rep.ProxyMemory))
		for i, p := range rep.ProxyMemory {
			mem[i] = Point{X: p.X, Y: p.Y}
		}
		groups = append(groups, plotGroup{Title: "proxy memory", Charts: []template.HTML{
			lineChart("proxy resident memory over the run", "time (s)", "RSS (MB)", []series{{"proxy RSS", "#2ca02c", mem}}, rep.Marks, true, 1100),
		}})
	}
	return page.Execute(w, map[string]any{"R": rep, "Results": rep.resultsTable(), "Rest": strings.TrimSpace(rest.String()), "Plots": groups})
}

// resultsTable is the results as an HTML table (a terminal table in a
// <pre> would need a horizontal scrollbar).
func (rep *Report) resultsTable() template.HTML {
	if len(rep.Results) == 0 {
		return ""
	}
	var b bytes.Buffer
	b.WriteString(`<table><tr><th>scenario</th><th>mode</th><th>cycles</th><th>errors</th><th>sessions /s</th><th>login p50 ms</th><th>p90</th><th>p99</th>` +
		`<th>cycle p50 ms</th><th>p90</th><th>p99</th><th>MB/s</th><th>download MB/s</th><th>proxy CPU per session</th><th>proxy RSS</th><th>upstream logins</th><th>token requests</th><th>proxy / direct</th></tr>`)
	for _, r := range rep.Results {
		for _, m := range []struct {
			name string
			m    *Mode
		}{{"direct", r.Direct}, {"proxy", r.Proxy}} {
			x := m.m
			if x == nil {
				continue
			}
			cpu, rss, ratio := "", "", ""
			if x.ProxyCPUPerSessionUs > 0 {
				cpu = fmt.Sprintf("%.0f µs", x.ProxyCPUPerSessionUs)
			}
			if x.ProxyRSSPeakMB > 0 {
				rss = fmt.Sprintf("%.1f MB", x.ProxyRSSPeakMB)
			}
			if m.name == "proxy" && r.CycleP50Ratio > 0 {
				ratio = fmt.Sprintf("cycle %.2f×, login %.2f×", r.CycleP50Ratio, r.LoginP50Ratio)
				if r.ThroughputRatio > 0 {
					ratio += fmt.Sprintf(", download %.2f×", r.ThroughputRatio)
				}
			}
			fmt.Fprintf(&b, `<tr><td>%s</td><td>%s</td><td>%d</td><td>%d</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%s</td><td>%s</td><td>%d</td><td>%d</td><td>%s</td></tr>`,
				template.HTMLEscapeString(r.Scenario), m.name, x.Cycles, x.Errors, x.SessionsPerS, x.Login.P50, x.Login.P90, x.Login.P99,
				x.Cycle.P50, x.Cycle.P90, x.Cycle.P99, x.MBPerS, x.TransferMBPerS, cpu, rss, x.UpstreamLogins, x.TokenRequests, ratio)
		}
	}
	b.WriteString(`</table>`)
	for _, r := range rep.Results {
		for _, m := range []*Mode{r.Direct, r.Proxy} {
			if m != nil && len(m.ErrorSamples) > 0 {
				fmt.Fprintf(&b, `<p>%s errors: %s</p>`, template.HTMLEscapeString(r.Scenario), template.HTMLEscapeString(strings.Join(m.ErrorSamples, "; ")))
			}
		}
	}
	return template.HTML(b.String())
}
