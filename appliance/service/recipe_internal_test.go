package service

import (
	"context"
	"strings"
	"testing"

	"github.com/sovereign-stack/ssbuild/appliance/deploy"
	"github.com/sovereign-stack/ssbuild/appliance/deploystate"
	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// A member reconciles to the cluster's latest revision, not to the older
// recipe file its stick carried; the file seeds only a deployment the
// cluster has no revision of.
func TestClusterRecipeWinsOverTheStickFile(t *testing.T) {
	ctx := context.Background()
	state := deploystate.Folder{Dir: secrets.Dir(t.TempDir())}
	stick, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := clusterRecipe(ctx, state, stick, "/etc/ssbuild/recipe.yaml"); got != nil || err != nil {
		t.Fatalf("no revision yet: %+v, %v; want the file", got, err)
	}
	record := func(r *recipes.Recipe, member string) {
		t.Helper()
		digest, text, err := deploy.RecipeDigest(r)
		if err != nil {
			t.Fatal(err)
		}
		rev, err := state.StartDeploy(ctx, registry.DeployStart{Deployment: r.Deployments[0].Project(), SpecHash: digest, Recipe: text, Member: member})
		if err == nil {
			err = state.EndDeploy(ctx, rev.Deployment, rev.Revision, 3, "")
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	record(stick, "demo1")
	if got, err := clusterRecipe(ctx, state, stick, "/etc/ssbuild/recipe.yaml"); got != nil || err != nil {
		t.Fatalf("the file is the current revision: %+v, %v; want the file", got, err)
	}
	later, err := recipes.Open("demo")
	if err != nil {
		t.Fatal(err)
	}
	later.Deployments[0].Sites[0].Services = append(later.Deployments[0].Sites[0].Services, "gitea")
	record(later, "demo2")
	got, err := clusterRecipe(ctx, state, stick, "/etc/ssbuild/recipe.yaml")
	if err != nil || got == nil {
		t.Fatalf("a later revision from demo2: %+v, %v; want it", got, err)
	}
	if !got.recipe.Deployments[0].Sites[0].Has("gitea") {
		t.Errorf("the recipe to deploy lacks the later revision's gitea")
	}
	want, _, _ := deploy.RecipeDigest(later)
	if d, _, _ := deploy.RecipeDigest(got.recipe); d != want {
		t.Errorf("the recorded recipe parsed again has digest %s, want %s (each reconcile would record a new revision)", d, want)
	}
	if !strings.Contains(got.why, "revision 2") || !strings.Contains(got.why, "by demo2") || !strings.Contains(got.why, "/etc/ssbuild/recipe.yaml") {
		t.Errorf("the log line does not say which revision replaces which file: %q", got.why)
	}
}
