package guestchan

// Counts reports how many guest-channel sessions snpd keeps (one per running VM with a
// serial channel) and how many of them are connected to their guest's agent now.
func (g *GuestSessions) Counts() (kept, connected int) {
	g.mu.Lock()
	ss := make([]*GuestSession, 0, len(g.sessions))
	for _, s := range g.sessions {
		ss = append(ss, s)
	}
	g.mu.Unlock()
	for _, s := range ss {
		kept++
		if s.Connected() {
			connected++
		}
	}
	return kept, connected
}
