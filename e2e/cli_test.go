package e2e_test

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// runCLI runs the binary and returns its exit status, stdout and stderr.
func runCLI(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errOut.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errOut.String()
	}
	t.Fatal(err)
	return 0, "", ""
}

// The command line explains itself: help on stdout with status 0 when
// asked for, on stderr with status 2 after a mistake; every flag described
// with its default; a version line.
func TestCLIExplainsItself(t *testing.T) {
	bin := buildBinary(t)
	for _, tc := range []struct {
		args   []string
		status int
		stdout string // a line it must hold ("" = empty)
		stderr string
	}{
		{nil, 2, "", "commands:"},
		{[]string{"help"}, 0, "commands:", ""},
		{[]string{"--help"}, 0, "commands:", ""},
		{[]string{"-h"}, 0, "commands:", ""},
		{[]string{"help", "serve"}, 0, "sip-listen", ""},
		{[]string{"serve", "--help"}, 0, "(sip.listen; default 127.0.0.1:5060)", ""},
		{[]string{"serve", "-h"}, 0, "data directory", ""},
		{[]string{"demo", "-h"}, 0, "the running gateway's admin API", ""},
		{[]string{"version"}, 0, "creditgate ", ""},
		{[]string{"--version"}, 0, "creditgate ", ""},
		{[]string{"serve", "--bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"launch"}, 2, "", `unknown command "launch"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			status, out, errOut := runCLI(t, bin, tc.args...)
			if status != tc.status || !strings.Contains(out, tc.stdout) || !strings.Contains(errOut, tc.stderr) ||
				(tc.stdout == "" && out != "") {
				t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s\nwant exit %d, stdout with %q, stderr with %q", status, out, errOut, tc.status, tc.stdout, tc.stderr)
			}
		})
	}
}

// Start-up errors say what is taken and what to change: the data
// directory held by another creditgate (with its pid), a SIP or admin
// address in use (with the flag).
func TestStartupErrorsNameTheCause(t *testing.T) {
	bin := buildBinary(t)
	g := startGateway(t, bin, t.TempDir())
	pid := fmt.Sprint(g.cmd.Process.Pid)

	status, _, errOut := runCLI(t, bin, "serve", "--data-dir", g.dataDir, "--sip-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	if status != 1 || !strings.Contains(errOut, "is in use by another creditgate (pid "+pid+")") || !strings.Contains(errOut, "--data-dir") {
		t.Errorf("second instance on the same data: exit %d, %s", status, errOut)
	}
	status, _, errOut = runCLI(t, bin, "serve", "--data-dir", t.TempDir(), "--sip-listen", fmt.Sprintf("127.0.0.1:%d", g.sipPort),
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	if m, _ := regexp.MatchString(`SIP address 127\.0\.0\.1:\d+ is in use .* --sip-listen`, errOut); status != 1 || !m {
		t.Errorf("SIP port taken: exit %d, %s", status, errOut)
	}
	status, _, errOut = runCLI(t, bin, "serve", "--data-dir", t.TempDir(), "--sip-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--http-listen", g.httpAddr)
	if status != 1 || !strings.Contains(errOut, "admin API address "+g.httpAddr+" is in use") || !strings.Contains(errOut, "--http-listen") {
		t.Errorf("admin port taken: exit %d, %s", status, errOut)
	}
}
