package costmodel

// Part is what one piece of a request body adds to an estimate. Walkers
// return parts instead of adding to a global so that a duplicate key can
// replace what its earlier occurrence added (the last occurrence wins).
type Part struct {
	Cost      int64 // text cost in Unit
	Bytes     int64 // decoded text bytes
	Tokens    int64 // token ids given as numbers: one token each
	Messages  int64 // messages (turns, input items)
	Images    int64 // images at full detail
	ImagesLow int64 // images at low detail
}

// Add adds q to p.
func (p *Part) Add(q Part) {
	p.Cost += q.Cost
	p.Bytes += q.Bytes
	p.Tokens += q.Tokens
	p.Messages += q.Messages
	p.Images += q.Images
	p.ImagesLow += q.ImagesLow
}

// Sum is the total of ps.
func Sum(ps []Part) (total Part) {
	for _, p := range ps {
		total.Add(p)
	}
	return total
}

// TextTokens is the token estimate of p's text and token ids: the text
// cost rounded up, and at least 1 for non-empty text.
func (p Part) TextTokens() int64 {
	t := int64(0)
	if p.Cost > 0 {
		t = (p.Cost + Unit - 1) / Unit
	}
	if t == 0 && p.Bytes > 0 {
		t = 1
	}
	return t + p.Tokens
}

// EstimateText is the token estimate of one text.
func EstimateText(text []byte) int64 {
	var tc Counter
	tc.Begin()
	tc.Write(text)
	return Part{Cost: tc.acc, Bytes: tc.bytes}.TextTokens()
}
