package main

import (
	"os"
	"path/filepath"
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
