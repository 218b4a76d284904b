package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/creditgate/creditgate/loadtest"
)

func demoFlags(fs *flag.FlagSet) func([]string) error {
	api := fs.String("api", "http://127.0.0.1:8080", "the running gateway's admin API")
	sipAddr := fs.String("sip", "127.0.0.1:5060", "the running gateway's SIP address (UDP)")
	dataDir := fs.String("data-dir", "./creditgate-data", "where to read the admin token (admin-token) when --admin-token and CREDITGATE_ADMIN_TOKEN are not set")
	token := fs.String("admin-token", "", "the admin API bearer token")
	hold := fs.Duration("hold", 5*time.Second, "how long the demo call talks before the caller hangs up")
	return func([]string) error {
		tok := *token
		if tok == "" {
			tok = os.Getenv("CREDITGATE_ADMIN_TOKEN")
		}
		if tok == "" {
			// A gateway started a moment ago writes its token on its
			// first start: give it the time a start takes.
			file := filepath.Join(*dataDir, "admin-token")
			b, err := os.ReadFile(file)
			for deadline := time.Now().Add(30 * time.Second); (errors.Is(err, os.ErrNotExist) || err == nil && len(bytes.TrimSpace(b)) == 0) &&
				time.Now().Before(deadline); {
				time.Sleep(100 * time.Millisecond)
				b, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("no admin token: give --admin-token, set CREDITGATE_ADMIN_TOKEN, or point --data-dir at the gateway's data directory (%w)", err)
			}
			tok = strings.TrimSpace(string(b))
		}
		if tok == "" {
			return errors.New("the admin token file is empty")
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return loadtest.Demo(ctx, loadtest.DemoConfig{API: *api, Token: tok, SIP: *sipAddr, Hold: *hold, Out: os.Stdout})
	}
}
