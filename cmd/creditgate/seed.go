package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
)

// creditgate cluster seed: a single node's data directory becomes the
// first node of a new cluster (cluster.SeedCluster does the moving; see
// cluster/seed.go for the steps and why a rerun finishes a cut-short one
// exactly once).

func seedFlags(fs *flag.FlagSet) func([]string) error {
	var o overrides
	configPath := fs.String("config", "", "the single node's YAML config file (its data_dir, catalogue and cluster: section)")
	fs.StringVar(&o.dataDir, "data-dir", "", "the single node's data directory, to become the cluster's first node (data_dir)")
	fs.StringVar(&o.clusterEtcd, "cluster-etcd", "", "the new cluster's etcd client URLs, comma-separated (cluster.etcd); its configuration must be empty")
	fs.StringVar(&o.nodeID, "node-id", "", "the node id this data directory will serve as in the cluster (cluster.node_id; default host-SIPPORT, as serve)")
	return func(args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unexpected arguments %q", args)
		}
		return seedCmd(os.Stdout, *configPath, o)
	}
}

// seedIDFile keeps, in the data directory, the id the seed claims etcd
// with: a rerun from the same directory resumes its own seed, any other
// directory is refused.
const seedIDFile = "cluster-seed-id"

// seedCmd runs the seed and prints what moved to w.
func seedCmd(w io.Writer, configPath string, o overrides) error {
	cfg, err := loadConfig(configPath, o)
	if err != nil {
		return err
	}
	if !cfg.Cluster.Enabled() {
		return errors.New("no cluster to seed: give its etcd with --cluster-etcd (cluster.etcd)")
	}
	ledgerDir := filepath.Join(cfg.DataDir, "ledger")
	if _, err := os.Stat(ledgerDir); err != nil {
		return fmt.Errorf("no single node's ledger in %s (%v): give its --data-dir (data_dir)", cfg.DataDir, err)
	}
	log := newLogger(cfg.Log)
	// cluster.lock refuses a cluster node running on the directory, the
	// ledger's own lock a single node.
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	source, err := seedSource(cfg.DataDir)
	if err != nil {
		return err
	}
	led, err := ledger.Open(ledgerDir, ledger.Options{MinFunding: cfg.MinFunding(), Plans: ledger.PlansOf(&cfg.Catalog), Logger: log})
	if err != nil {
		return storeLocked(cfg.DataDir, err)
	}
	defer led.Close()

	id, err := nodeID(cfg)
	if err != nil {
		return err
	}
	c := cfg.Cluster
	tlsCfg, err := etcdTLS(c)
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Etcd, DialTimeout: c.OpTimeout, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("cluster.etcd %s: %w", strings.Join(c.Etcd, ","), err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	node, err := cluster.Join(ctx, cli, cluster.Config{Prefix: c.Prefix, NodeID: id, LeaseTTL: c.LeaseTTL,
		Margin: c.LeaseMargin, KeepAliveEvery: c.KeepaliveEvery, OpTimeout: c.OpTimeout}, clock.Real{})
	if err != nil {
		return fmt.Errorf("join the cluster at %s as %s: %w", strings.Join(c.Etcd, ","), id, err)
	}
	if err := markCluster(cfg.DataDir, "seeded into the cluster at "+strings.Join(c.Etcd, ",")+" as "+id); err != nil {
		return err
	}
	rep, err := cluster.SeedCluster(ctx, node, led, source)
	if err != nil && !led.ClusterBound() {
		// Refused or cut short before the ledger's money moved: the
		// directory can still serve as the single node it was.
		if uerr := unmarkCluster(cfg.DataDir); uerr != nil {
			log.Warn("seed", "error", uerr)
		}
	}
	if cerr := node.Close(context.Background()); cerr != nil {
		log.Warn("cluster: leaving after the seed (the lease ends by itself)", "error", cerr)
	}
	switch {
	case errors.Is(err, cluster.ErrConfigExists):
		return fmt.Errorf("%w: seed only a new, empty cluster (another data directory seeded this one, or nodes configured it)", err)
	case errors.Is(err, cluster.ErrInvalid):
		return err // refused as things stand: stop what runs, settle what is open, then run it again
	case err != nil:
		return fmt.Errorf("%w\nnothing moved twice; run the same command again to finish the seed", err)
	}
	printSeed(w, cfg.DataDir, id, strings.Join(c.Etcd, ","), rep)
	return nil
}

// readSeedSource is the data directory's seed id, "" if it was never
// seeded (or the file cannot be read: the check it serves is then skipped).
func readSeedSource(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, seedIDFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// seedSource reads the data directory's seed id, or makes and keeps a new
// random one (synced before the seed claims etcd with it).
func seedSource(dir string) (string, error) {
	p := filepath.Join(dir, seedIDFile)
	if b, err := os.ReadFile(p); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("seed id: %w", err)
	}
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	s := hex.EncodeToString(raw)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("seed id: %w", err)
	}
	_, werr := f.WriteString(s + "\n")
	serr := f.Sync()
	if err := errors.Join(werr, serr, f.Close()); err != nil {
		return "", fmt.Errorf("seed id %s: %w", p, err)
	}
	return s, nil
}

func printSeed(w io.Writer, dataDir, id, etcd string, rep cluster.SeedReport) {
	if rep.AlreadyDone {
		fmt.Fprintf(w, "The cluster at %s was already seeded from %s; nothing changed.\n", etcd, dataDir)
	} else {
		how := "Seeded"
		if rep.Resumed {
			how = "Finished seeding"
		}
		fmt.Fprintf(w, "%s the cluster at %s from %s (node %s).\n", how, etcd, dataDir, id)
		fmt.Fprintf(w, "configuration: %d records (orgs, trunks, users, toll-free numbers, rate deck), %d of them API keys\n",
			rep.Records, rep.Keys)
		fmt.Fprintf(w, "money moved to etcd (the ledger's balance now 0, entry %s/1):\n", ledger.SeedSlice)
		if len(rep.Orgs) == 0 {
			fmt.Fprintln(w, "  none (no org had a balance)")
		}
		for _, o := range rep.Orgs {
			note := ""
			if o.Replayed {
				note = " (moved by the earlier run)"
			}
			fmt.Fprintf(w, "  %s %s%s\n", o.Org, o.Amount.StringFixed(2), note)
		}
		fmt.Fprintln(w, "minute pools used this month:")
		if len(rep.Pools) == 0 {
			fmt.Fprintln(w, "  none")
		}
		for _, p := range rep.Pools {
			fmt.Fprintf(w, "  %s %s %s: %d of %d minutes used\n", p.Org, p.Plan, p.Month, p.Used, p.Total)
		}
	}
	fmt.Fprintf(w, "Start this data directory as the cluster's first node with the same config and --node-id %s:\n", id)
	fmt.Fprintf(w, "  creditgate serve --data-dir %s --cluster-etcd %s --node-id %s\n", dataDir, etcd, id)
	fmt.Fprintln(w, "then the other nodes, each on an empty data directory.")
}
