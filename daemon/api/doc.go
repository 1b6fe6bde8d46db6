// Package api holds the wire types of snpd's HTTP/JSON API, shared by the server and
// snpctl. It imports only the standard library.
package api
