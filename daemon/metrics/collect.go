package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector reads the Sources at each scrape: nothing is kept between scrapes, and
// nothing runs between them.
type stateCollector struct{ m *Metrics }

var (
	descVMs = prometheus.NewDesc("snpd_vms",
		"Defined VMs by state (stopped, starting, running, stopping, crashed, failed) and the platform snpd launches them for (sev-snp, or none: not confidential).",
		[]string{"platform", "state"}, nil)
	descVMState = prometheus.NewDesc("snpd_vm_state",
		"1 for each VM, labelled with its name and current state (only with metrics.per_vm).",
		[]string{"vm", "state"}, nil)
	descSessions = prometheus.NewDesc("snpd_guest_sessions",
		"Guest-channel sessions snpd keeps: one per running VM with a serial channel.", nil, nil)
	descSessionsConnected = prometheus.NewDesc("snpd_guest_sessions_connected",
		"Guest-channel sessions connected to the guest's agent right now.", nil, nil)
	descCerts = prometheus.NewDesc("snpd_certificates",
		"AMD certificates in snpd's cache, by kind (ARK, ASK, ASVK, VCEK, VLEK).", []string{"kind"}, nil)
	descCertExpiry = prometheus.NewDesc("snpd_certificate_expiry_seconds",
		"Seconds until the earliest cached certificate of each kind expires (negative: expired).", []string{"kind"}, nil)
	descStoreSize = prometheus.NewDesc("snpd_store_size_bytes",
		"Size of the durable store (state.db) in bytes.", nil, nil)
	descStoreWrite = prometheus.NewDesc("snpd_store_last_write_timestamp_seconds",
		"When a write to the durable store last committed, in seconds since the Unix epoch.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVMs, descVMState, descSessions, descSessionsConnected,
		descCerts, descCertExpiry, descStoreSize, descStoreWrite} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	src := m.sources()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if src.VMs != nil {
		vms, err := src.VMs()
		if err != nil {
			m.log.Warn("collecting metrics: listing vms", "err", err)
			ch <- prometheus.NewInvalidMetric(descVMs, err)
		} else {
			for _, s := range vmStates {
				n := 0
				for _, v := range vms {
					if v.State == s {
						n++
					}
				}
				gauge(descVMs, float64(n), m.opts.Platform, string(s))
			}
			if m.opts.PerVM {
				for _, v := range vms {
					gauge(descVMState, 1, v.Name, string(v.State))
				}
			}
		}
	}
	if src.GuestSessions != nil {
		kept, connected := src.GuestSessions()
		gauge(descSessions, float64(kept))
		gauge(descSessionsConnected, float64(connected))
	}
	if src.Certs != nil {
		certs, err := src.Certs()
		if err != nil {
			m.log.Warn("collecting metrics: listing certificates", "err", err)
			ch <- prometheus.NewInvalidMetric(descCerts, err)
		} else {
			count := map[string]int{}
			earliest := map[string]time.Time{}
			for _, c := range certs {
				count[c.Kind]++
				if e, ok := earliest[c.Kind]; !ok || c.NotAfter.Before(e) {
					earliest[c.Kind] = c.NotAfter
				}
			}
			now := m.opts.Now()
			for kind, n := range count {
				gauge(descCerts, float64(n), kind)
				gauge(descCertExpiry, earliest[kind].Sub(now).Seconds(), kind)
			}
		}
	}
	if src.Store != nil {
		st, err := src.Store()
		if err != nil {
			m.log.Warn("collecting metrics: reading store statistics", "err", err)
			ch <- prometheus.NewInvalidMetric(descStoreSize, err)
		} else {
			gauge(descStoreSize, float64(st.SizeBytes))
			if !st.LastWrite.IsZero() {
				gauge(descStoreWrite, float64(st.LastWrite.UnixNano())/1e9)
			}
		}
	}
}
