package stack

import (
	"context"
	"testing"

	"github.com/sovereign-stack/ssbuild/internal/progress"
)

// BenchmarkApplyDemo: Apply of the demo www stack (4 containers, 1
// network, 3 volumes) into a private dockerd, from nothing (cold: after
// Down --purge) and again with nothing changed (no-change: 0 mutations).
//
//	go test ./appliance/stack -run '^$' -bench ApplyDemo -benchtime 5x
func BenchmarkApplyDemo(b *testing.B) {
	e := newDemoEnv(b)
	ctx := context.Background()
	st := e.render(b, "www")
	b.Run("cold", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			if _, err := Down(ctx, e.c, st.Project, true, progress.Discard()); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			res, err := Apply(ctx, e.c, st, progress.Discard())
			if err != nil {
				b.Fatal(err)
			}
			if len(res.Created) != len(st.Services) {
				b.Fatalf("cold Apply: %+v", res)
			}
		}
	})
	b.Run("no-change", func(b *testing.B) {
		if _, err := Apply(ctx, e.c, st, progress.Discard()); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			res, err := Apply(ctx, e.c, st, progress.Discard())
			if err != nil {
				b.Fatal(err)
			}
			if res.Mutations != 0 {
				b.Fatalf("no-change Apply made %d mutations", res.Mutations)
			}
		}
	})
}
