package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/snpd/snpd/daemon/api"
)

var bucketLibvirt = []byte("libvirt")

// LibvirtRegistration is a libvirt domain snpd checked (and, for a sev-snp domain,
// measured) without launching it (libvirt launches it); stored so verifiers can be
// served its expected digest, or told it is not confidential.
type LibvirtRegistration struct {
	Name string `json:"name"`
	// XML is the domain XML libvirt passed to the hook.
	XML string `json:"xml"`
	// Definition is the domain mapped onto the VM spec (config.VM as JSON).
	Definition json.RawMessage `json:"definition"`
	// Record is the launch record as far as it is known before libvirt starts QEMU
	// (expected digest, component digests, policy; no pid or argv).
	Record       *api.LaunchRecord `json:"record"`
	RegisteredAt time.Time         `json:"registered_at"`
}

// PutLibvirt stores (or replaces) a libvirt domain registration.
func (s *Store) PutLibvirt(reg *LibvirtRegistration) error {
	b, err := json.Marshal(reg)
	if err != nil {
		return fmt.Errorf("encoding libvirt domain %q: %w", reg.Name, err)
	}
	err = s.update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketLibvirt)
		if err != nil {
			return err
		}
		return bk.Put([]byte(reg.Name), b)
	})
	if err != nil {
		return fmt.Errorf("storing libvirt domain %q: %w", reg.Name, err)
	}
	return nil
}

// LibvirtDomain returns a libvirt domain's registration, or an api.ErrNotFound error.
func (s *Store) LibvirtDomain(name string) (*LibvirtRegistration, error) {
	var reg LibvirtRegistration
	err := s.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLibvirt)
		var v []byte
		if bk != nil {
			v = bk.Get([]byte(name))
		}
		if v == nil {
			return fmt.Errorf("libvirt domain %q is not registered: %w", name, api.ErrNotFound)
		}
		return json.Unmarshal(v, &reg)
	})
	if err != nil {
		return nil, fmt.Errorf("reading libvirt domain %q: %w", name, err)
	}
	return &reg, nil
}

// DeleteLibvirt removes a libvirt domain's registration.
func (s *Store) DeleteLibvirt(name string) error {
	err := s.update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLibvirt)
		if bk == nil || bk.Get([]byte(name)) == nil {
			return fmt.Errorf("libvirt domain %q is not registered: %w", name, api.ErrNotFound)
		}
		return bk.Delete([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("deleting libvirt domain %q: %w", name, err)
	}
	return nil
}

// ListLibvirt returns every libvirt domain registration, in name order (empty: none).
func (s *Store) ListLibvirt() ([]LibvirtRegistration, error) {
	var out []LibvirtRegistration
	err := s.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketLibvirt)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			var reg LibvirtRegistration
			if err := json.Unmarshal(v, &reg); err != nil {
				return fmt.Errorf("decoding libvirt domain %q: %w", k, err)
			}
			out = append(out, reg)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing libvirt domains: %w", err)
	}
	return out, nil
}
