package load

import (
	"testing"

	"github.com/google/pprof/profile"
)

// A profile's samples are charged to the running function (flat), to
// every function on the stack once (cum), and to the areas whose
// functions appear on the stack.
func TestSummarizeProfile(t *testing.T) {
	fn := func(id uint64, name string) *profile.Function { return &profile.Function{ID: id, Name: name} }
	handshake := fn(1, "crypto/tls.(*Conn).clientHandshake")
	mlkem := fn(2, "crypto/internal/fips140/mlkem.ntt")
	write := fn(3, "internal/runtime/syscall/linux.Syscall6")
	log := fn(4, "github.com/rs/zerolog.(*Event).Msg")
	loc := func(id uint64, f ...*profile.Function) *profile.Location {
		l := &profile.Location{ID: id}
		for _, x := range f {
			l.Line = append(l.Line, profile.Line{Function: x})
		}
		return l
	}
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		Sample: []*profile.Sample{
			{Location: []*profile.Location{loc(1, mlkem), loc(2, handshake)}, Value: []int64{3, 30e6}},
			{Location: []*profile.Location{loc(3, write), loc(4, log)}, Value: []int64{1, 10e6}},
		},
	}
	s := SummarizeProfile(p, 1)
	if s.CPUs != 0.04 || len(s.Top) != 1 || s.Top[0].Name != mlkem.Name || s.Top[0].Flat != 75 || s.Top[0].Cum != 75 {
		t.Fatalf("top: %+v (cpu %v)", s.Top, s.CPUs)
	}
	want := map[string]float64{"TLS handshakes": 75, "  key exchange (ECDH, ML-KEM)": 75, "logging": 25, "system calls": 25, "allocation": 0}
	for _, a := range s.Areas {
		if w, ok := want[a.Name]; ok && a.Cum != w {
			t.Errorf("%s: %.1f%%, want %.1f%%", a.Name, a.Cum, w)
		}
	}
}
