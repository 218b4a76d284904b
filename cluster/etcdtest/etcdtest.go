// Package etcdtest starts real etcd members for tests: the etcd binary
// (Debian's etcd-server, /usr/bin/etcd, which .ci/run installs) on loopback,
// with free ports and data in t.TempDir(), stopped by PID when the test ends.
// No mocks: the cluster package's guarantees are etcd's, so its tests run
// against etcd itself.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Binary is where Debian's etcd-server puts the server; ETCD_BIN overrides it.
const Binary = "/usr/bin/etcd"

// startTimeout bounds how long a cluster may take to answer its first read.
const startTimeout = 30 * time.Second

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	cmd       *exec.Cmd
	done      chan struct{}
}

// PID is the process id of the member.
func (m *Member) PID() int { return m.cmd.Process.Pid }

// Cluster is 1 or more etcd members started together.
type Cluster struct {
	Members []*Member
	t       testing.TB
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.ClientURL
	}
	return eps
}

// binary finds the etcd server. Missing, it fails the test in CI (CI=true)
// and skips it elsewhere.
func binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("ETCD_BIN")
	if bin == "" {
		bin = Binary
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcd server %s missing (apt-get install etcd-server; .ci/run does): %v", bin, err)
		}
		t.Skipf("etcd server %s missing (apt-get install etcd-server): %v", bin, err)
	}
	return bin
}

// freePort asks the kernel for a free loopback port. Another process may take
// it before etcd binds it; Start then fails with etcd's own error.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs n members (1 or 3) as one new cluster and waits until it serves
// a linearizable read. The members are killed (by PID) when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := binary(t)
	if n < 1 || n > 5 {
		t.Fatalf("etcdtest.Start: %d members, want 1 to 5", n)
	}
	dir := t.TempDir()
	c := &Cluster{t: t}
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			done:      make(chan struct{}),
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	token := fmt.Sprintf("etcdtest-%d", time.Now().UnixNano())
	for _, m := range c.Members {
		logf, err := os.Create(filepath.Join(dir, m.Name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		m.cmd = exec.Command(bin,
			"--name", m.Name,
			"--data-dir", filepath.Join(dir, m.Name),
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--heartbeat-interval", "50",
			"--election-timeout", "500",
			"--log-level", "warn",
		)
		m.cmd.Stdout = logf
		m.cmd.Stderr = logf
		if err := m.cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("start etcd %s: %v", m.Name, err)
		}
		go func(m *Member, logf *os.File) {
			m.cmd.Wait()
			logf.Close()
			close(m.done)
		}(m, logf)
		t.Cleanup(func() { c.Kill(m) })
	}
	c.waitReady(dir)
	return c
}

// Kill stops one member with SIGKILL, by PID, and waits for it to exit.
func (c *Cluster) Kill(m *Member) {
	select {
	case <-m.done:
		return
	default:
	}
	if err := syscall.Kill(m.PID(), syscall.SIGKILL); err != nil {
		c.t.Errorf("kill etcd %s (pid %d): %v", m.Name, m.PID(), err)
		return
	}
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		c.t.Errorf("etcd %s (pid %d) still running 10 s after SIGKILL", m.Name, m.PID())
	}
}

func (c *Cluster) waitReady(dir string) {
	c.t.Helper()
	cli := c.Client()
	defer cli.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "etcdtest-ready")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
			var b strings.Builder
			for _, l := range logs {
				data, _ := os.ReadFile(l)
				fmt.Fprintf(&b, "--- %s\n%s\n", l, data)
			}
			c.t.Fatalf("etcd cluster not ready after %s: %v\n%s", startTimeout, err, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Client is a new client of every member; the caller closes it.
func (c *Cluster) Client() *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      nopLogger(),
	})
	if err != nil {
		c.t.Fatalf("etcd client: %v", err)
	}
	return cli
}
