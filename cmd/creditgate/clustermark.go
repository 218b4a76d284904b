package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// clusterMarkFile marks a data directory whose ledger belongs to a cluster:
// a cluster node's (its balance is slices of etcd's money) or a seeded
// single node's (its balance moved into etcd). Served without
// --cluster-etcd, such a ledger would settle its open calls as a single
// node and sell from money that is etcd's, or show every org at 0.00
// after a seed; a single-node serve refuses it. The file outlives the
// process on purpose, unlike cluster.lock's flock.
const clusterMarkFile = "cluster-node"

// markCluster writes the mark (synced) before anything of the ledger's
// money can move to etcd.
func markCluster(dir, why string) error {
	p := filepath.Join(dir, clusterMarkFile)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("cluster mark: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s\nThis data directory's money is in the cluster's etcd: serve it with --cluster-etcd (cluster.etcd).\n", why)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cluster mark: %w", err)
	}
	return nil
}

// unmarkCluster takes the mark back: a seed refused before the ledger's
// money moved leaves the directory a single node's.
func unmarkCluster(dir string) error {
	if err := os.Remove(filepath.Join(dir, clusterMarkFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cluster mark: %w", err)
	}
	return nil
}

// refuseClusterDir is a single-node serve's check of the mark.
func refuseClusterDir(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, clusterMarkFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("cluster mark: %w", err)
	}
	return fmt.Errorf("data_dir %s belongs to a cluster (%s: %q): serve it with --cluster-etcd; "+
		"started alone it would sell from money that is etcd's", dir, filepath.Join(dir, clusterMarkFile), firstLine(b))
}

func firstLine(b []byte) string {
	for i, c := range b {
		if c == '\n' {
			return string(b[:i])
		}
	}
	return string(b)
}
