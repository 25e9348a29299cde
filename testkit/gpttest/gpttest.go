// Package gpttest reads a GPT disk image the way a user checks one: with
// sgdisk, and by copying a partition out for blkid, fsck and friends.
package gpttest

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Partition is one row of `sgdisk -p`.
type Partition struct {
	Start, End int64 // sectors of 512 bytes
	Code, Name string
}

// Partitions lists img's partitions as sgdisk prints them.
func Partitions(t testing.TB, img string) []Partition {
	t.Helper()
	text, err := exec.Command("sgdisk", "-p", img).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk -p %s: %v\n%s", img, err, text)
	}
	var out []Partition
	for _, line := range strings.Split(string(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[0] != strconv.Itoa(len(out)+1) {
			continue
		}
		start, _ := strconv.ParseInt(f[1], 10, 64)
		end, _ := strconv.ParseInt(f[2], 10, 64)
		out = append(out, Partition{Start: start, End: end, Code: f[5], Name: f[6]})
	}
	return out
}

// Extract copies partition p of img into its own file, for the tools that
// read a file system from a file.
func Extract(t testing.TB, img string, p Partition) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := filepath.Join(t.TempDir(), p.Name+".img")
	o, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, err := io.Copy(o, io.NewSectionReader(f, p.Start*512, (p.End-p.Start+1)*512)); err != nil {
		t.Fatal(err)
	}
	return out
}
