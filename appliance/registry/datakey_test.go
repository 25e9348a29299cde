package registry

import (
	"bytes"
	"sync"
	"testing"
)

// The data key's wrappings: the first member to start stores one, and two
// starting at once end with one; a rotation adds another; removing all but
// one keeps that one and refuses an unknown one (which would lose the key).
func TestDataKeyWrappings(t *testing.T) {
	n := startNode(t, Config{Dir: t.TempDir(), Address: freeAddress(t)})
	ctx := opCtx(t)
	if w, err := n.reg.DataKeyWrappings(ctx); err != nil || len(w) != 0 {
		t.Fatalf("a new registry's wrappings: %d, %v", len(w), err)
	}
	var wg sync.WaitGroup
	got := make([]map[string][]byte, 2)
	for i, fp := range []string{"kek-a", "kek-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := n.reg.InitDataKey(ctx, fp, []byte("wrapped by "+fp))
			if err != nil {
				t.Error(err)
			}
			got[i] = w
		}()
	}
	wg.Wait()
	stored, err := n.reg.DataKeyWrappings(ctx)
	if err != nil || len(stored) != 1 {
		t.Fatalf("after two members initialised at once: %d wrappings, %v; want 1", len(stored), err)
	}
	for i := range got {
		if len(got[i]) != 1 {
			t.Errorf("member %d was answered %d wrappings, want the one stored", i, len(got[i]))
		}
		for fp, w := range got[i] {
			if !bytes.Equal(stored[fp], w) {
				t.Errorf("member %d was answered a wrapping the registry does not hold", i)
			}
		}
	}
	var first string
	for fp := range stored {
		first = fp
	}
	if err := n.reg.AddDataKeyWrapping(ctx, "kek-new", []byte("wrapped by kek-new")); err != nil {
		t.Fatal(err)
	}
	if w, _ := n.reg.InitDataKey(ctx, "kek-c", []byte("x")); len(w) != 2 || w["kek-c"] != nil {
		t.Errorf("InitDataKey with wrappings stored: %d of them, kek-c stored %v", len(w), w["kek-c"] != nil)
	}
	if _, err := n.reg.RemoveDataKeyWrappings(ctx, "kek-unknown"); err == nil {
		t.Error("removing all but an unknown wrapping succeeded")
	}
	if n, err := n.reg.RemoveDataKeyWrappings(ctx, "kek-new"); err != nil || n != 1 {
		t.Errorf("remove all but the new: %d removed, %v; want 1 (%s)", n, err, first)
	}
	if w, _ := n.reg.DataKeyWrappings(ctx); len(w) != 1 || string(w["kek-new"]) != "wrapped by kek-new" {
		t.Errorf("after the removal: %v", w)
	}
}
