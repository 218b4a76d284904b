// The console's one way to read or change anything: a request to the
// admin API's handler, in process, with the session's key.

package console

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/valyala/fasthttp"
)

// ViaHeader marks the API requests the console makes, so the audit trail
// can say a change came through the console. It is api.ViaHeader (this
// package does not import api; TestOrgAdminSeesAndChangesOnlyItsOrg checks
// the two agree and that the API journals the console's changes so).
const ViaHeader = "X-Creditgate-Via"

// loopback is the remote address of an in-process call.
var loopback = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}

// apiError is the API's JSON refusal ({"error":{"code","message","lines"}}),
// or a status with no such body.
type apiError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	Lines   []struct {
		Line  int    `json:"line"`
		Error string `json:"error"`
	} `json:"lines"`
}

func (e *apiError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("the API answered %d", e.Status)
	}
	return e.Message
}

// apiResponse is one answer of the API. A streamed body (the usage
// exports) is left unread in resp for the caller to pass on.
type apiResponse struct {
	rc *fasthttp.RequestCtx
}

func (r apiResponse) status() int { return r.rc.Response.StatusCode() }

// call sends one request to the API with the session's key and returns
// its answer. The RequestCtx is built here per call (fasthttp's
// RequestCtx.Init): a few allocations, measured by BenchmarkAPICall.
//
// A 401 means the API no longer accepts the key (revoked, or rotated
// away): the session is marked, and Handle ends it once the request is
// done, whatever the page made of the refusal.
func (c *Console) call(s *session, method, path, contentType string, body []byte) apiResponse {
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(path)
	req.Header.Set("Authorization", "Bearer "+s.secret)
	req.Header.Set(ViaHeader, "console")
	if contentType != "" {
		req.Header.SetContentType(contentType)
	}
	if body != nil {
		req.SetBody(body)
	}
	rc := &fasthttp.RequestCtx{}
	rc.Init(&req, loopback, nil)
	c.cfg.API(rc)
	if rc.Response.StatusCode() == 401 {
		s.keyRefused.Store(true)
	}
	return apiResponse{rc: rc}
}

// do calls the API and decodes a 2xx JSON answer into out (when not nil);
// any other answer is an *apiError.
func (c *Console) do(s *session, method, path string, in, out any) error {
	var body []byte
	ct := ""
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
		ct = "application/json"
	}
	r := c.call(s, method, path, ct, body)
	return r.decode(out)
}

// decode reads the answer: 2xx into out, else the API's error.
func (r apiResponse) decode(out any) error {
	st := r.status()
	b := r.rc.Response.Body() // reads a streamed body to its end
	if st < 200 || st > 299 {
		e := &apiError{Status: st}
		var wrap struct {
			Error *apiError `json:"error"`
		}
		wrap.Error = e
		_ = json.Unmarshal(b, &wrap)
		e.Status = st
		return e
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the API's answer: %w", err)
	}
	return nil
}

// stream is the answer's body as a reader (a streamed export is read as
// it is produced) and whether it succeeded; on failure the error.
func (r apiResponse) stream() (io.Reader, error) {
	if st := r.status(); st < 200 || st > 299 {
		return nil, r.decode(nil)
	}
	if s := r.rc.Response.BodyStream(); s != nil {
		return s, nil
	}
	return strings.NewReader(string(r.rc.Response.Body())), nil
}

// whoami asks the API who key is (GET /v1/whoami): the only way the
// console learns a key's role and org. The key is not a session yet: it
// is asked about as one that is stored nowhere.
func (c *Console) whoami(key string) (identity, error) {
	var id identity
	err := c.do(&session{secret: key}, "GET", "/v1/whoami", nil, &id)
	return id, err
}
