package loadtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// SlowReadConfig is a slow-reader run: Conns clients that each GET URL with
// a bearer token and read the response at BytesPerSec through a 4 KiB
// receive buffer — the client that holds a large export open for as long
// as the server lets it. A client whose response ended (or was refused, or
// cut) connects again after a second, until For has passed.
type SlowReadConfig struct {
	URL, Token  string
	Conns       int
	BytesPerSec int
	For         time.Duration
}

// SlowReadReport counts what the server did with the slow readers.
type SlowReadReport struct {
	Requests  int64         `json:"requests"`    // connections made
	ByStatus  map[int]int64 `json:"by_status"`   // responses by HTTP status
	Cut       int64         `json:"cut"`         // responses the server ended early (reset or closed mid-body)
	Completed int64         `json:"completed"`   // responses read to their end
	Open      int64         `json:"open_at_end"` // still reading when For ran out
	Bytes     int64         `json:"bytes"`
}

func (r SlowReadReport) String() string {
	return fmt.Sprintf("slow readers: %d requests, statuses %v, %d cut by the server, %d completed, %d still open at the end, %d bytes read\n",
		r.Requests, r.ByStatus, r.Cut, r.Completed, r.Open, r.Bytes)
}

// SlowRead runs cfg until For has passed or ctx ends.
func SlowRead(ctx context.Context, cfg SlowReadConfig) (SlowReadReport, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "http" {
		return SlowReadReport{}, fmt.Errorf("slow read: %q is not an http:// URL", cfg.URL)
	}
	if cfg.Conns <= 0 || cfg.BytesPerSec <= 0 {
		return SlowReadReport{}, fmt.Errorf("slow read: connections and bytes per second must be positive")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.For)
	defer cancel()
	var (
		mu   sync.Mutex
		rep  = SlowReadReport{ByStatus: map[int]int64{}}
		wg   sync.WaitGroup
		open atomic.Int64
	)
	for range cfg.Conns {
		wg.Go(func() {
			for ctx.Err() == nil {
				status, n, outcome := slowGet(ctx, u, cfg.Token, cfg.BytesPerSec)
				mu.Lock()
				rep.Requests++
				rep.Bytes += n
				if status > 0 {
					rep.ByStatus[status]++
				}
				switch outcome {
				case "cut":
					rep.Cut++
				case "completed":
					rep.Completed++
				case "open":
					open.Add(1)
				}
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		})
	}
	wg.Wait()
	rep.Open = open.Load()
	return rep, nil
}

// slowGet is one slow request: its status, the bytes read, and whether it
// was "completed", "cut" by the server, or still "open" when ctx ended.
func slowGet(ctx context.Context, u *url.URL, token string, bps int) (status int, n int64, outcome string) {
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return 0, 0, "cut"
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n", u.RequestURI(), u.Host, token); err != nil {
		return 0, 0, "cut"
	}
	r := bufio.NewReaderSize(c, 16)
	line, err := r.ReadString('\n')
	n += int64(len(line))
	if f := strings.Fields(line); len(f) >= 2 {
		status, _ = strconv.Atoi(f[1])
	}
	buf := make([]byte, bps)
	var tail []byte // the last bytes read: a chunked body ends "0\r\n\r\n"
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for err == nil {
		var m int
		m, err = io.ReadFull(r, buf)
		n += int64(m)
		tail = append(tail, buf[:m]...)
		if len(tail) > 5 {
			tail = tail[len(tail)-5:]
		}
		if err != nil {
			break
		}
		select {
		case <-ctx.Done():
			return status, n, "open"
		case <-tick.C:
		}
	}
	switch {
	case ctx.Err() != nil:
		return status, n, "open"
	case (err == io.EOF || err == io.ErrUnexpectedEOF) && (status != 200 || string(tail) == "0\r\n\r\n"):
		// Connection: close, at the end of the response: a refusal, or
		// a chunked body with its terminator.
		return status, n, "completed"
	default:
		return status, n, "cut"
	}
}
