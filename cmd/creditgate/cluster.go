package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/creditgate/creditgate/api"
	"github.com/creditgate/creditgate/cluster"
	"github.com/creditgate/creditgate/configs"
	"github.com/creditgate/creditgate/gateway"
	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// clusterNode is this process's part in a cluster: the etcd client, the
// membership (lease and epoch), the shared configuration applied to the
// local ledger, and the Books the gateway and API spend through. stop
// undoes them in reverse: slices returned, watcher stopped, lease revoked,
// client closed.
type clusterNode struct {
	cli     *clientv3.Client
	node    *cluster.Node
	replica *cluster.Replica
	books   *cluster.Books
	// rejoin is what the node found of its earlier incarnations (issue 17):
	// the calls survivors settled go to the ledger's Open.
	rejoin *cluster.Rejoin
	lock   *os.File // data_dir/cluster.lock, held while the process runs
	// guard shares the fraud guard's figures with the other nodes: the
	// ledger opens with it (ledger.Options.PeerGuard), start starts it.
	guard *cluster.Guard
}

// joinCluster connects to etcd, joins as cfg.Cluster.NodeID (or the
// host-port default) and claims the node's earlier incarnations that no
// survivor reaped (cluster.Node.ClaimOwn), all before the local ledger is
// opened: the ledger's restart settlement must know which calls survivors
// ended and settled. It first locks the data directory (cluster.lock), so
// no other process on it can be alive while it claims. start then opens
// the cluster's side over the ledger.
func joinCluster(ctx context.Context, cfg configs.Config, log *slog.Logger) (*clusterNode, error) {
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	c := cfg.Cluster
	id, err := nodeID(cfg)
	if err != nil {
		lock.Close()
		return nil, err
	}

	tlsCfg, err := etcdTLS(c)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Etcd, DialTimeout: c.OpTimeout, TLS: tlsCfg,
		// etcd's client logs through zap; what matters to an operator
		// (joined, lease lost, fenced) is logged by the cluster package.
		Logger: zap.NewNop()})
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("cluster.etcd %s: %w", strings.Join(c.Etcd, ","), err)
	}
	cn := &clusterNode{cli: cli, lock: lock}
	cn.node, err = cluster.Join(ctx, cli, cluster.Config{Prefix: c.Prefix, NodeID: id, LeaseTTL: c.LeaseTTL,
		Margin: c.LeaseMargin, KeepAliveEvery: c.KeepaliveEvery, OpTimeout: c.OpTimeout}, clock.Real{})
	if err != nil {
		cli.Close()
		lock.Close()
		return nil, fmt.Errorf("join the cluster at %s as %s: %w", strings.Join(c.Etcd, ","), id, err)
	}
	// A seed claimed and not finished (creditgate cluster seed, cut
	// short): the configuration may be in etcd without its money.
	if err := cluster.CheckSeeded(ctx, cn.node, readSeedSource(cfg.DataDir)); err != nil {
		cn.stop(log)
		return nil, err
	}
	cn.guard = cluster.NewGuard(clock.Real{}, log.With("component", "fraud_guard"))
	if cn.rejoin, err = cn.node.ClaimOwn(ctx); err != nil {
		cn.stop(log)
		return nil, fmt.Errorf("cluster rejoin as %s: %w", id, err)
	}
	if len(cn.rejoin.Claimed)+len(cn.rejoin.Reaped) > 0 {
		log.Warn("rejoining the cluster", "node", id, "epoch", cn.node.Epoch(), "settled_from_disk", cn.rejoin.Claimed,
			"reaped_by_survivors", cn.rejoin.Reaped, "calls_settled_elsewhere", len(cn.rejoin.SettledElsewhere))
	}
	return cn, nil
}

// start brings the local ledger up to the shared configuration and opens
// the cluster's Books on it (which settle the node's last incarnation).
// On failure it leaves the cluster (stop).
func (cn *clusterNode) start(ctx context.Context, cfg configs.Config, local *ledger.Ledger, log *slog.Logger) error {
	id, c := cn.node.ID(), cfg.Cluster
	var err error
	if cn.replica, err = cluster.NewReplica(ctx, cn.node, local, log.With("component", "replica")); err != nil {
		cn.stop(log)
		if errors.Is(err, cluster.ErrUnseeded) {
			return fmt.Errorf("cluster configuration: %w: move this single node's data into the cluster first with creditgate cluster seed (README, Existing data), or start on an empty --data-dir", err)
		}
		return fmt.Errorf("cluster configuration: %w", err)
	}
	// From here on the ledger takes slices of etcd's money: a single-node
	// serve must refuse the directory (clustermark.go).
	if err := markCluster(cfg.DataDir, "a node of the cluster at "+strings.Join(c.Etcd, ",")+" as "+id); err != nil {
		cn.stop(log)
		return err
	}
	if cn.books, err = cluster.NewBooks(cn.node, local, cn.replica, cluster.DefaultSlicePolicy(), clock.Real{},
		log.With("component", "cluster")); err != nil {
		cn.stop(log)
		return fmt.Errorf("cluster books: %w", err)
	}
	// The fraud guard's limits hold for the org across the cluster, and
	// its notification goes out once per cluster (cluster/guard.go).
	cn.guard.Start(cn.node, local)
	cn.books.UseGuard(cn.guard)
	log.Info("joined the cluster", "node", id, "epoch", cn.node.Epoch(), "etcd", strings.Join(c.Etcd, ","))
	return nil
}

// startReaper gives the Books the gateway's BYEs for a dead node's calls
// and starts the reaper: once the gateway listens, so the BYEs can leave.
func (cn *clusterNode) startReaper(gw *gateway.Gateway) {
	cn.books.SetLegEnder(gw.EndLegs)
	cn.books.StartReaper()
}

// stopReaper stops the reaper before the gateway closes: once the
// gateway's context is cancelled a reap's BYEs cannot leave, and the reap
// under way is left for a survivor to take over.
func (cn *clusterNode) stopReaper() {
	if cn != nil && cn.books != nil {
		cn.books.StopReaper()
	}
}

// lockDataDir takes data_dir/cluster.lock (flock, held until the process
// exits): a second process on the data directory is refused before it
// claims anything in etcd.
func lockDataDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "cluster.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cluster lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, storeLocked(dir, err)
	}
	return f, nil
}

// stop leaves the cluster: it returns the node's unspent slices while the
// lease still fences its writes, then gives the lease back so peers see it
// gone at once instead of after lease_ttl.
func (cn *clusterNode) stop(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cn.books != nil {
		if err := cn.books.Close(ctx); err != nil {
			log.Error("cluster: returning slices on the way out", "error", err)
		}
	}
	if cn.replica != nil {
		_ = cn.replica.Close()
	}
	if cn.guard != nil {
		cn.guard.Close() // its figures go with the lease
	}
	if cn.node != nil {
		if err := cn.node.Close(ctx); err != nil {
			log.Warn("cluster: leaving (the lease ends by itself)", "error", err)
		}
	}
	cn.cli.Close()
	if cn.lock != nil {
		cn.lock.Close()
	}
}

// nodeID is cluster.node_id, or "host-SIPPORT" so that nodes on one host
// (and a node across its restarts) get distinct, stable names.
func nodeID(cfg configs.Config) (string, error) {
	if cfg.Cluster.NodeID != "" {
		return cfg.Cluster.NodeID, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("cluster.node_id not set and no host name: %w", err)
	}
	_, port, _ := net.SplitHostPort(cfg.SIP.Listen)
	id := strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == '.' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
			return r
		}
		return '-'
	}, host+"-"+port)
	if len(id) > 64 {
		id = id[len(id)-64:]
	}
	return id, nil
}

// etcdTLS is the client's TLS to etcd; nil for plain http:// endpoints
// without a client certificate.
func etcdTLS(c configs.Cluster) (*tls.Config, error) {
	if c.TLSCA == "" && c.TLSCert == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("cluster.tls_ca: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, errors.New("cluster.tls_ca: no PEM certificate in " + c.TLSCA)
		}
	}
	if c.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("cluster.tls_cert/tls_key: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// follow keeps what the gateway holds parsed — the rate deck and the
// trunks' routing — in step with the shared configuration the replica
// applies to the local ledger, changes made through other nodes included.
// It runs until ctx ends; its caller waits for it.
func (cn *clusterNode) follow(ctx context.Context, gw *gateway.Gateway, local *ledger.Ledger, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-cn.replica.TrunksChanged():
			gw.ReloadTrunks()
		case <-cn.replica.DeckChanged():
			d, err := rating.ParseDeck(bytes.NewReader(local.Deck()))
			if err != nil {
				// Decks are validated before they reach etcd; one that
				// does not parse here is kept out, the old one stays.
				log.Error("cluster: the shared rate deck does not parse; keeping the one in force", "error", err)
				continue
			}
			gw.SetDeck(d)
			log.Info("rate deck replaced from the cluster", "rows", d.Rows())
		}
	}
}

// serveReads lets the admin API answer the calls list, ending a call and
// usage for the whole cluster: it gives the API the registry of peers,
// then registers this node's admin URL (on its lease) so the peers find
// it. Called once the API listens on ln.
func (cn *clusterNode) serveReads(cfg configs.Config, srv *api.Server, ln net.Listener) error {
	u, err := adminURL(cfg, ln.Addr())
	if err != nil {
		return err
	}
	srv.SetPeers(cn.node.ID(), peerList{cn.node}, cfg.Cluster.PeerTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Cluster.OpTimeout)
	defer cancel()
	if err := cn.node.Register(ctx, u); err != nil {
		return fmt.Errorf("register the admin API %s in the cluster: %w", u, err)
	}
	return nil
}

// adminURL is the admin API as peers reach it: cluster.advertise_http, or
// http.listen's host with the port the listener got.
func adminURL(cfg configs.Config, addr net.Addr) (string, error) {
	if cfg.Cluster.AdvertiseHTTP != "" {
		return strings.TrimSuffix(cfg.Cluster.AdvertiseHTTP, "/"), nil
	}
	host, _, err := net.SplitHostPort(cfg.HTTP.Listen)
	if err != nil {
		return "", fmt.Errorf("http.listen %q: %w", cfg.HTTP.Listen, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return "", fmt.Errorf("cluster.advertise_http: http.listen %q listens on every address; set the address peers reach this node's admin API at, e.g. http://10.0.0.5:8080", cfg.HTTP.Listen)
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("admin API listener %s: not TCP", addr)
	}
	scheme := "http"
	if cfg.HTTP.TLSCert != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(tcp.Port)), nil
}

// peerList is the cluster's registry as the API's Peers.
type peerList struct{ node *cluster.Node }

func (p peerList) Peers(ctx context.Context) ([]api.Peer, error) {
	ps, err := p.node.Peers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Peer, len(ps))
	for i, x := range ps {
		out[i] = api.Peer{Node: x.NodeID, URL: x.AdminURL, Down: x.Down}
	}
	return out, nil
}
