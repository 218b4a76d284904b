package etcdtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// What a chaos test does to a running cluster beyond Kill: find the
// leader, bring a killed member back on its own data directory, pause and
// continue one. A member is one process at a time: Restart replaces the
// process under the same *Member (same name, URLs, data), so Kill and the
// test's cleanup stop whichever process runs now. These methods are called
// from one goroutine at a time per member (the test's, or the one chaos
// goroutine it owns and waits for before it ends).

// Running reports whether the member's current process has not exited.
func (m *Member) Running() bool {
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Leader is the member that answers, through its own Status, that it leads
// the raft group; an error when no member does within ctx (an election in
// progress, or a majority down), naming what each member last answered.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	cli := c.Client()
	defer cli.Close()
	last := map[string]string{}
	for {
		for _, m := range c.Members {
			if !m.Running() {
				last[m.Name] = "not running"
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := cli.Status(sctx, m.ClientURL)
			cancel()
			if err != nil {
				last[m.Name] = err.Error()
				continue
			}
			if st.Leader != 0 && st.Leader == st.Header.MemberId {
				return m, nil
			}
			last[m.Name] = fmt.Sprintf("member %x, leader %x, raft term %d, index %d, errors %v", st.Header.MemberId, st.Leader, st.RaftTerm, st.RaftIndex, st.Errors)
		}
		select {
		case <-ctx.Done():
			var b strings.Builder
			for _, m := range c.Members {
				fmt.Fprintf(&b, "; %s: %s", m.Name, last[m.Name])
			}
			return nil, fmt.Errorf("etcdtest: no leader among the members%s: %w\n%s", b.String(), ctx.Err(), c.Logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Logs is the end of every member's log (its last 4 KiB), for a failing
// test's message.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, m := range c.Members {
		data, err := os.ReadFile(c.logPath(m))
		if err != nil {
			fmt.Fprintf(&b, "--- %s: %v\n", m.Name, err)
			continue
		}
		if len(data) > 4096 {
			data = data[len(data)-4096:]
		}
		fmt.Fprintf(&b, "--- %s (pid %d, running %v)\n%s\n", m.Name, m.PID(), m.Running(), data)
	}
	return b.String()
}

// logPath is where the member's output goes: beside its data directory.
func (c *Cluster) logPath(m *Member) string {
	for i, a := range m.cmd.Args {
		if a == "--data-dir" && i+1 < len(m.cmd.Args) {
			return filepath.Join(filepath.Dir(m.cmd.Args[i+1]), m.Name+".log")
		}
	}
	return ""
}

// Restart starts a killed member again with the arguments it first ran
// with, on its data directory (etcd then ignores the --initial-* flags and
// rejoins as the member it was), appending to its log. It returns once the
// member answers its own Status: it has replayed its log and reached its
// peers (a lone member of three answers Status without a quorum, so this
// does not wait for the others).
func (c *Cluster) Restart(m *Member) {
	c.t.Helper()
	if m.Running() {
		c.t.Fatalf("etcdtest: restart of %s, which is running (pid %d)", m.Name, m.PID())
	}
	logPath := c.logPath(m)
	if logPath == "" {
		c.t.Fatalf("etcdtest: %s was started without --data-dir", m.Name)
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(m.cmd.Path, m.cmd.Args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("etcdtest: restart %s: %v", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	m.cmd, m.done = cmd, done

	cli := c.Client()
	defer cli.Close()
	for deadline := time.Now().Add(startTimeout); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Status(ctx, m.ClientURL)
		cancel()
		if err == nil {
			return
		}
		if !m.Running() || time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			c.t.Fatalf("etcdtest: restarted %s does not answer after %v (running %v): %v\n%s", m.Name, startTimeout, m.Running(), err, log)
		}
	}
}

// Pause stops the member with SIGSTOP (a frozen VM, a long GC): its sockets
// stay open and say nothing. Continue resumes it.
func (c *Cluster) Pause(m *Member) {
	if err := syscall.Kill(m.PID(), syscall.SIGSTOP); err != nil {
		c.t.Errorf("etcdtest: SIGSTOP %s (pid %d): %v", m.Name, m.PID(), err)
	}
}

// Continue resumes a paused member with SIGCONT.
func (c *Cluster) Continue(m *Member) {
	if err := syscall.Kill(m.PID(), syscall.SIGCONT); err != nil {
		c.t.Errorf("etcdtest: SIGCONT %s (pid %d): %v", m.Name, m.PID(), err)
	}
}
