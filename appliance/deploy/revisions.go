package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/sovereign-stack/ssbuild/appliance/registry"
	"github.com/sovereign-stack/ssbuild/appliance/secrets"
	"github.com/sovereign-stack/ssbuild/recipes"
)

// run is one deployment's revision being deployed.
type run struct {
	dep     recipes.Deployment
	rev     registry.Revision
	secrets secrets.Set // for redacting the recorded error
	errs    []error     // its instances' errors
}

// RecipeDigest is the digest a revision records: the SHA-256 of the
// effective recipe (defaults filled in), so the same recipe read from a
// file or a shipped name is the same revision. It returns the text too.
func RecipeDigest(r *recipes.Recipe) (digest, text string, err error) {
	data, err := recipes.Marshal(r)
	if err != nil {
		return "", "", fmt.Errorf("deploy: recipe text for the revision: %w", err)
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:]), string(data), nil
}

// recordTimeout bounds one revision write: longer than a registry failover.
const recordTimeout = 45 * time.Second

// startRevisions records the start of each deployment's deploy. It fails
// when the state store does not answer: nothing has changed yet.
func (o *Options) startRevisions(ctx context.Context, deps []recipes.Deployment) ([]*run, error) {
	digest, text, err := RecipeDigest(o.Recipe)
	if err != nil {
		return nil, err
	}
	var runs []*run
	for _, d := range deps {
		rctx, cancel := context.WithTimeout(ctx, recordTimeout)
		rev, err := o.State.StartDeploy(rctx, registry.DeployStart{Deployment: d.Project(), SpecHash: digest, Recipe: text, Member: o.Member})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("deployment %s: record the deploy in %s: %w (nothing was changed)", d.Project(), o.State.Where(), err)
		}
		o.Progress.Info("%s: revision %d (recipe %s) on %s", d.Project(), rev.Revision, shortDigest(digest), runner(o.Member))
		runs = append(runs, &run{dep: d, rev: rev})
	}
	return runs, nil
}

// endRevisions records each deployment's outcome: its instances' errors,
// or the run's when it stopped before them. A failed record is reported,
// not returned: the deploy itself is done.
func (o *Options) endRevisions(runs []*run, rep Report, err error) {
	for _, r := range runs {
		msg := ""
		switch {
		case len(r.errs) > 0:
			msg = errors.Join(r.errs...).Error()
		case err != nil:
			msg = err.Error()
		}
		msg = r.secrets.Redact(msg)
		ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
		if rerr := o.State.EndDeploy(ctx, r.dep.Project(), r.rev.Revision, rep.Mutations, msg); rerr != nil {
			o.Progress.Info("%s: record the outcome of revision %d: %v", r.dep.Project(), r.rev.Revision, rerr)
		}
		cancel()
	}
}
