package gateway

import (
	"os"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// TestMain keeps sipgo's own logging (every malformed datagram is an
// ERROR line) out of test output; a fuzz worker writing a line per input
// fills its pipe to the coordinator and is taken for hung.
func TestMain(m *testing.M) {
	sip.SetDefaultLogger(quietLog())
	os.Exit(m.Run())
}
