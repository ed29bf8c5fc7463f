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
func lineChart(title, xLabel, yLabel string, ss []series, marks []Mark) template.HTML {
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
	xmax, ymax = niceCeil(xmax), niceCeil(ymax)
	iw, ih := float64(plotW-padL-padR), float64(plotH-padT-padB)
	px := func(x float64) float64 { return padL + x/xmax*iw }
	py := func(y float64) float64 { return padT + ih - y/ymax*ih }
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`, plotW, plotH)
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
	for _, m := range marks {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#bbb" stroke-dasharray="3 3"/>`, px(m.At), px(m.At), padT, padT+ih)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="9" transform="rotate(-30 %.1f %d)">%s</text>`, px(m.At)+2, padT+8, px(m.At)+2, padT+8, template.HTMLEscapeString(m.Label))
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
.plots{display:flex;flex-wrap:wrap;gap:12px}pre{overflow-x:auto;font-size:12px}</style></head><body>
<h1>emailproxy bench</h1>
<p>{{.R.Started.Format "2006-01-02 15:04 MST"}} · {{.R.Machine.CPU}}, {{.R.Machine.Cores}} cores · {{.R.Machine.Kernel}} · {{.R.Machine.Go}}</p>
<p>{{range $k, $v := .R.Settings}}<b>{{$k}}</b> {{$v}} · {{end}}</p>
<h2>Results</h2><pre>{{.Table}}</pre>
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
	var table bytes.Buffer
	rep.WriteTable(&table)
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
			lineChart(r.Scenario+": cycle latency distribution", "cycle latency (ms)", "fraction of cycles", lat, nil),
			lineChart(r.Scenario+": completed cycles per second", "time (s)", "cycles/s", thr, nil),
		}})
	}
	if len(rep.ProxyMemory) > 0 {
		mem := make([]Point, len(rep.ProxyMemory))
		for i, p := range rep.ProxyMemory {
			mem[i] = Point{X: p.X, Y: p.Y}
		}
		groups = append(groups, plotGroup{Title: "proxy memory", Charts: []template.HTML{
			lineChart("proxy resident memory over the run", "time (s)", "RSS (MB)", []series{{"proxy RSS", "#2ca02c", mem}}, rep.Marks),
		}})
	}
	return page.Execute(w, map[string]any{"R": rep, "Table": table.String(), "Plots": groups})
}
