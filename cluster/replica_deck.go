package cluster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// A rate deck may be 64 MiB (the admin API's limit), and etcd takes at most
// 1.5 MiB per request by default. So a deck is written as chunks of
// deckChunkBytes under deck/<id>/, each in its own fenced transaction, then
// config/deck — the pointer every node watches — is flipped to the new id
// in one compare-and-set, and only then are the old id's chunks deleted. A
// node applying a pointer reads its chunks at the pointer's revision, so a
// later flip (and its deletion) cannot pull them away from under it unless
// etcd compacted that revision, which a full resync then covers. A writer
// that dies before its flip leaves chunks no pointer names: harmless, and
// never read (cleaning them needs an operator's etcdctl del).
const (
	deckChunkBytes = 1 << 20
	// MaxDeckBytes bounds a deck the replica stores: the admin API's own
	// limit on a PUT /v1/rates body.
	MaxDeckBytes = 64 << 20
)

// deckPointer is config/deck: which chunks make the deck, and its digest.
type deckPointer struct {
	ID     string `json:"id"`
	Chunks int    `json:"chunks"`
	Bytes  int    `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// PutDeck is ledger.Books.PutDeck for the cluster: the deck (validated by
// rating first, as for the ledger) replaces the shared one, chunked. A deck
// over MaxDeckBytes is refused with ledger.ErrInvalid.
func (r *Replica) PutDeck(csv []byte) error {
	if len(csv) > MaxDeckBytes {
		return fmt.Errorf("%w: rate deck of %d bytes, at most %d", ledger.ErrInvalid, len(csv), MaxDeckBytes)
	}
	ptr, err := writeDeckChunks(r.ctx, r.n, csv)
	if err != nil {
		r.dropChunks(ptr.ID)
		return unavailable("put deck", err)
	}
	var old deckPointer
	key := r.k.cfgDeck()
	err = r.change("put deck", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		old = deckPointer{}
		kv := v.get(key)
		if kv != nil {
			if err := json.Unmarshal(kv.Value, &old); err != nil {
				r.log.Error("shared rate deck pointer unreadable; replacing it", "err", err)
			}
		}
		return []clientv3.Cmp{modRevIs(key, kv)}, []clientv3.Op{clientv3.OpPut(key, encode(ptr))}, nil
	})
	if err != nil {
		// The flip may have landed (an error after the commit): the
		// chunks stay, as a pointer may name them.
		return err
	}
	if old.ID != "" && old.ID != ptr.ID {
		r.dropChunks(old.ID)
	}
	return nil
}

// writeDeckChunks writes a deck's chunks under a new id, each in its own
// fenced transaction, and returns the pointer that names them (not yet
// written).
func writeDeckChunks(ctx context.Context, n *Node, csv []byte) (deckPointer, error) {
	var raw [8]byte
	_, _ = rand.Read(raw[:])
	sum := sha256.Sum256(csv)
	ptr := deckPointer{ID: hex.EncodeToString(raw[:]), Bytes: len(csv), SHA256: hex.EncodeToString(sum[:])}
	for off := 0; off < len(csv); off += deckChunkBytes {
		chunk := csv[off:min(off+deckChunkBytes, len(csv))]
		if _, _, err := n.commit(ctx, nil, []clientv3.Op{clientv3.OpPut(n.k.deckChunk(ptr.ID, ptr.Chunks), string(chunk))}); err != nil {
			return ptr, err
		}
		ptr.Chunks++
	}
	return ptr, nil
}

// dropChunks deletes one deck id's chunks, best effort: left behind, they
// cost only space.
func (r *Replica) dropChunks(id string) {
	if _, _, err := r.n.commit(r.ctx, nil, []clientv3.Op{clientv3.OpDelete(r.k.deckChunks(id), clientv3.WithPrefix())}); err != nil {
		r.log.Warn("could not delete an old rate deck's chunks from etcd", "deck", id, "err", err)
	}
}

// fetchDeck reads the deck a pointer names, at revision rev, and checks its
// size and digest.
func (r *Replica) fetchDeck(ctx context.Context, ptr deckPointer, rev int64) ([]byte, error) {
	if ptr.Bytes < 0 || ptr.Bytes > MaxDeckBytes || ptr.Chunks < 0 || ptr.Chunks > MaxDeckBytes/deckChunkBytes+1 {
		return nil, fmt.Errorf("rate deck pointer %+v out of bounds", ptr)
	}
	out := make([]byte, 0, ptr.Bytes)
	for i := 0; i < ptr.Chunks; i++ {
		gctx, cancel := context.WithTimeout(ctx, r.n.cfg.OpTimeout)
		resp, err := r.n.cli.Get(gctx, r.k.deckChunk(ptr.ID, i), clientv3.WithRev(rev))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("rate deck %s chunk %d: %w", ptr.ID, i, err)
		}
		if len(resp.Kvs) != 1 {
			return nil, fmt.Errorf("rate deck %s chunk %d missing at revision %d", ptr.ID, i, rev)
		}
		out = append(out, resp.Kvs[0].Value...)
	}
	sum := sha256.Sum256(out)
	if len(out) != ptr.Bytes || hex.EncodeToString(sum[:]) != ptr.SHA256 {
		return nil, fmt.Errorf("rate deck %s: %d bytes (sha256 %x), its pointer says %d (%s)", ptr.ID, len(out), sum, ptr.Bytes, ptr.SHA256)
	}
	return out, nil
}
