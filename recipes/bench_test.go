package recipes

import "testing"

// BenchmarkLoadDefault measures loading, defaulting and validating the
// shipped default recipe (what every command does first).
func BenchmarkLoadDefault(b *testing.B) {
	src, err := BuiltinSource("default")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("default.yaml", src, ""); err != nil {
			b.Fatal(err)
		}
	}
}
