package main

import (
	"context"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/images/dockerpreload"
	"github.com/sovereign-stack/ssbuild/testkit/testdocker"
)

// The command the first-boot unit runs loads the saved images into the
// daemon DOCKER_HOST names, and a second run is a no-op.
func TestLoadDockerImagesCommand(t *testing.T) {
	build := testdocker.Start(t)
	id := testdocker.ImportBusybox(t, build.Client, "ssbuild-demo/web:1", "hello")
	dir := t.TempDir()
	if _, err := dockerpreload.Save(context.Background(), build.Client,
		[]dockerpreload.Image{{Ref: "ssbuild-demo/web:1"}}, dir, nil); err != nil {
		t.Fatal(err)
	}

	instance := testdocker.Start(t)
	t.Setenv("DOCKER_HOST", "unix://"+instance.Socket)
	code, _, errOut := ssbuild(t, dockerpreload.LoadCommand, "--dir", dir)
	if code != 0 {
		t.Fatalf("first run: code %d: %s", code, errOut)
	}
	got, err := instance.Client.ImageInspect(context.Background(), "ssbuild-demo/web:1")
	if err != nil || got.ID != id {
		t.Fatalf("image on the instance: %v, id %s want %s", err, got.ID, id)
	}
	code, _, errOut = ssbuild(t, dockerpreload.LoadCommand, "--dir", dir)
	if code != 0 || strings.Contains(errOut, "loaded") {
		t.Errorf("second run: code %d, output %q (want a silent no-op)", code, errOut)
	}
}
