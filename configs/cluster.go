package configs

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Cluster is cluster mode: several creditgate nodes spending the same orgs'
// money, with the money of record and the shared configuration in etcd
// (cluster/doc.go). No etcd endpoints — the default — is single-node mode:
// etcd is never contacted and nothing below is read.
type Cluster struct {
	// Etcd lists the etcd members' client URLs (http:// or https://);
	// --cluster-etcd URL[,URL…] sets it.
	Etcd []string `yaml:"etcd"`
	// NodeID names this node among the cluster's (letters, digits, '-',
	// '_', '.'; not "cluster"); it must be unique and stay the same across
	// restarts of the same node. Empty: the host name and the SIP port ("host-5060").
	NodeID string `yaml:"node_id"`
	// Prefix is put before every etcd key, so several clusters (or a test
	// and production) can share one etcd.
	Prefix string `yaml:"prefix"`
	// LeaseTTL is how long etcd keeps a silent node as a member. A node
	// stops selling LeaseMargin before its lease can end; peers act on its
	// death only after etcd has expired it.
	LeaseTTL       time.Duration `yaml:"lease_ttl"`
	LeaseMargin    time.Duration `yaml:"lease_margin"`
	KeepaliveEvery time.Duration `yaml:"keepalive_every"`
	// OpTimeout bounds every request to etcd.
	OpTimeout time.Duration `yaml:"op_timeout"`
	// TLS to etcd: a CA to verify the members' certificates, and a client
	// certificate and key when etcd requires client authentication
	// (--client-cert-auth). Required for https:// endpoints: give at
	// least TLSCA.
	TLSCA   string `yaml:"tls_ca"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// AdvertiseHTTP is this node's admin API as its peers reach it,
	// http(s)://host:port, registered in etcd so that any node can answer
	// the calls list, ending a call and usage for the whole cluster.
	// Empty: http.listen's address (https when http.tls_cert is set), which
	// must then be a host peers can reach, not 0.0.0.0 or [::].
	AdvertiseHTTP string `yaml:"advertise_http"`
	// PeerTimeout bounds each peer's answer to a cluster-wide read; a peer
	// slower than that is listed as unavailable in the answer.
	PeerTimeout time.Duration `yaml:"peer_timeout"`
}

// Enabled says whether the node runs in cluster mode.
func (c Cluster) Enabled() bool { return len(c.Etcd) > 0 }

func (c Cluster) validate(bad func(string, string, ...any) error) error {
	if !c.Enabled() {
		return nil
	}
	if len(c.Etcd) > 64 {
		return bad("cluster.etcd", "at most 64 endpoints, got %d", len(c.Etcd))
	}
	tls := false
	for i, e := range c.Etcd {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return bad(fmt.Sprintf("cluster.etcd[%d]", i), "%q: want an etcd client URL like http://127.0.0.1:2379", e)
		}
		tls = tls || u.Scheme == "https"
	}
	if tls && c.TLSCA == "" {
		return bad("cluster.tls_ca", "https:// etcd endpoints need the CA that signed the members' certificates")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return bad("cluster.tls_cert", "give both tls_cert and tls_key, or neither")
	}
	if c.NodeID != "" && !validNodeID(c.NodeID) {
		return bad("cluster.node_id", "%q: want 1 to 64 letters, digits, '-', '_' or '.'", c.NodeID)
	}
	if c.NodeID == "cluster" {
		// The API's merged transactions label the fundings etcd keeps so.
		return bad("cluster.node_id", "%q names the cluster's own entries in merged lists: choose another", c.NodeID)
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") || len(c.Prefix) > 128 {
		return bad("cluster.prefix", "%q: want a key prefix that starts and ends with '/'", c.Prefix)
	}
	if c.LeaseTTL < 2*time.Second || c.LeaseTTL > 5*time.Minute || c.LeaseTTL%time.Second != 0 {
		return bad("cluster.lease_ttl", "want whole seconds from 2s to 5m, got %s", c.LeaseTTL)
	}
	if c.LeaseMargin <= 0 || c.LeaseMargin >= c.LeaseTTL {
		return bad("cluster.lease_margin", "want more than 0 and less than lease_ttl (%s), got %s", c.LeaseTTL, c.LeaseMargin)
	}
	if c.KeepaliveEvery <= 0 || c.KeepaliveEvery >= c.LeaseTTL-c.LeaseMargin {
		return bad("cluster.keepalive_every", "want more than 0 and less than lease_ttl − lease_margin (%s), got %s",
			c.LeaseTTL-c.LeaseMargin, c.KeepaliveEvery)
	}
	if c.OpTimeout < 100*time.Millisecond || c.OpTimeout > time.Minute {
		return bad("cluster.op_timeout", "want 100ms to 1m, got %s", c.OpTimeout)
	}
	if c.AdvertiseHTTP != "" {
		u, err := url.Parse(c.AdvertiseHTTP)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Port() == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return bad("cluster.advertise_http", "%q: want http(s)://host:port, the admin API as peers reach it", c.AdvertiseHTTP)
		}
	}
	if c.PeerTimeout < 100*time.Millisecond || c.PeerTimeout > time.Minute {
		return bad("cluster.peer_timeout", "want 100ms to 1m, got %s", c.PeerTimeout)
	}
	return nil
}

// validNodeID: a node id is part of etcd keys and of metric labels.
func validNodeID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		ok := r == '-' || r == '_' || r == '.' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !ok {
			return false
		}
	}
	return true
}
