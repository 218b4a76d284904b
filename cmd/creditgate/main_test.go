package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creditgate/creditgate/configs"
)

func TestResolveToken(t *testing.T) {
	cfg := configs.Default()
	cfg.DataDir = t.TempDir()
	t.Setenv("CREDITGATE_ADMIN_TOKEN", "")

	tok, file, err := resolveToken(cfg)
	if err != nil || len(tok) < 32 || file != filepath.Join(cfg.DataDir, "admin-token") {
		t.Fatalf("generated token %q at %q: %v", tok, file, err)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	again, _, err := resolveToken(cfg)
	if err != nil || again != tok {
		t.Fatalf("second start got %q, want the stored %q", again, tok)
	}

	t.Setenv("CREDITGATE_ADMIN_TOKEN", "from-the-environment-123")
	if got, _, _ := resolveToken(cfg); got != "from-the-environment-123" {
		t.Fatalf("environment token not used: %q", got)
	}
	cfg.HTTP.AdminToken = "from-flag-or-config-123"
	if got, _, _ := resolveToken(cfg); got != "from-flag-or-config-123" {
		t.Fatalf("flag/config token not used: %q", got)
	}
	t.Setenv("CREDITGATE_ADMIN_TOKEN", "short")
	cfg.HTTP.AdminToken = ""
	if _, _, err := resolveToken(cfg); err == nil {
		t.Fatal("a short environment token was accepted")
	}
}

func TestSIPTLSRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		sip  configs.SIP
		want string
	}{
		{"missing certificate", configs.SIP{TLSListen: "127.0.0.1:5061", TLSCert: filepath.Join(dir, "none.pem"), TLSKey: notPEM}, "sip.tls_cert"},
		{"not a key pair", configs.SIP{TLSListen: "127.0.0.1:5061", TLSCert: notPEM, TLSKey: notPEM}, "sip.tls_cert"},
		{"missing CA", configs.SIP{TLSCA: filepath.Join(dir, "none.pem")}, "sip.tls_ca"},
		{"CA without a certificate", configs.SIP{TLSCA: notPEM}, "sip.tls_ca"},
	} {
		if _, err := sipTLS(tc.sip); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error naming %s", tc.name, err, tc.want)
		}
	}
	if c, err := sipTLS(configs.SIP{}); c != nil || err != nil {
		t.Fatalf("no TLS configured: %v, %v; want nil, nil", c, err)
	}
}
