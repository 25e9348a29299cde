package testbed_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sovereign-stack/ssbuild/testkit/testbed"
	"github.com/sovereign-stack/ssbuild/testkit/testenv"
)

// BenchmarkStartClose measures a bed's start (until every daemon answers)
// and its close, for the sizes the appliance tests use.
func BenchmarkStartClose(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTools(b, testbed.Tools...)
	for _, n := range []int{1, 3, 5} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			var start, close time.Duration
			for range b.N {
				t0 := time.Now()
				bed, err := testbed.Start(context.Background(), testbed.Options{Hosts: n})
				start += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := bed.Close(); err != nil {
					b.Fatal(err)
				}
				close += time.Since(t1)
			}
			b.ReportMetric(start.Seconds()/float64(b.N), "s-start/op")
			b.ReportMetric(close.Seconds()/float64(b.N), "s-close/op")
		})
	}
}
