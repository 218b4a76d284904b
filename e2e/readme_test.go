package e2e_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadmeTryACall runs the README's "Try a call" section as a new
// operator would: its shell blocks, extracted from README.md (not copied),
// one after the other in one shell, on the default ports. Two things are
// the test's own: the `go build` line is done by the test into the
// working directory (the same command, run from the repository), and a
// final `wait` lets the gateway finish stopping after the block's kill.
func TestReadmeTryACall(t *testing.T) {
	requireSIPp(t)
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := shellBlocks(t, string(readme), "## Try a call")
	if len(blocks) != 2 {
		t.Fatalf("want the demo block and the by-hand block in the README's Try a call section, found %d", len(blocks))
	}
	script := strings.Join(blocks, "\n")
	const build = "go build -o creditgate ./cmd/creditgate"
	if !strings.Contains(script, build) {
		t.Fatalf("the Try a call block no longer starts with %q", build)
	}
	dir := t.TempDir()
	bin := buildBinary(t)
	must(t, os.Link(bin, filepath.Join(dir, "creditgate")))
	// The SIPp scenarios are named from the repository's root.
	root, _ := filepath.Abs("..")
	must(t, os.Symlink(filepath.Join(root, "loadtest"), filepath.Join(dir, "loadtest")))
	script = strings.Replace(script, build, ": built by the test", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail\n"+script+"\nwait\n")
	cmd.Dir = dir
	// The block starts the gateway and SIPp in the background: in a
	// process group of their own, all of which goes when the test ends,
	// whatever failed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Cleanup(func() {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	log, _ := os.ReadFile(filepath.Join(dir, "creditgate.log"))
	if err != nil {
		t.Fatalf("the README's block failed: %v\n%s\ngateway log:\n%s", err, out.String(), log)
	}
	got := out.String()
	for _, want := range []string{
		"demo: up now (GET /v1/calls)",
		"demo: CDR: call_id=",
		"disconnect_reason=caller_hangup",
		"demo: org demo: balance",
		"call_id,org,user,from,to",                  // the demo's usage CSV header
		`"calls":[{`,                                // GET /v1/calls with alice's call up
		"+12125550100,+442079460018,United Kingdom", // alice's CDR in acme's CSV
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the README's block printed no %q:\n%s\ngateway log:\n%s", want, got, log)
		}
	}
	if !strings.Contains(string(log), `msg=stopped`) {
		t.Errorf("the gateway did not stop on the block's kill:\n%s", log)
	}
}

// shellBlocks returns the ```sh blocks of the README section that starts
// with heading, up to the next "## ".
func shellBlocks(t *testing.T, readme, heading string) []string {
	t.Helper()
	i := strings.Index(readme, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("no %q section in the README", heading)
	}
	section := readme[i+1:]
	if j := strings.Index(section[len(heading):], "\n## "); j >= 0 {
		section = section[:len(heading)+j]
	}
	var blocks []string
	for {
		a := strings.Index(section, "```sh\n")
		if a < 0 {
			return blocks
		}
		section = section[a+len("```sh\n"):]
		b := strings.Index(section, "```")
		if b < 0 {
			t.Fatal("unterminated ```sh block")
		}
		blocks = append(blocks, section[:b])
		section = section[b+3:]
	}
}
