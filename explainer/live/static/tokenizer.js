/*
 * tokenizer.js: the CLIP BPE tokenizer in plain JS (SDXLive.CLIPTokenizer), for the live page.
 *
 * Built from the model's own tokenizer files (explainer.live.js_data.tokenizer_payload reads them):
 *   new SDXLive.CLIPTokenizer({vocab: {token: id}, merges: "<merges.txt text>", config: {...}})
 * where config is tokenizer_config.json merged with special_tokens_map.json (model_max_length,
 * bos_token, eos_token, pad_token, unk_token, do_lower_case). Nothing about CLIP's sizes is built in.
 *
 * encode(text, {padding: 'max_length', truncation: true}) -> {input_ids, tokens, attention_mask} gives
 * what transformers.CLIPTokenizer (the `tokenizers`-backed one) gives for diffusers' call
 *   tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
 * step by step:
 *   1. special tokens (bos/eos/unk/pad, written literally, case-sensitive) are split out of the raw text;
 *   2. each other piece is normalised: Unicode NFC, every run of white space -> one space, lower-cased
 *      character by character (as Rust's char::to_lowercase: no final-sigma rule);
 *   3. pre-tokenised with CLIP's pattern 's|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
 *      (letters runs, single digits, runs of other non-space characters; white space dropped);
 *   4. each pre-token's UTF-8 bytes are mapped to GPT-2's printable byte alphabet;
 *   5. byte-pair merges in merges.txt rank order, the last symbol carrying the "</w>" end-of-word suffix;
 *      a piece missing from the vocabulary becomes unk_token;
 *   6. truncated to model_max_length - 2, wrapped in bos ... eos, padded with pad_token to model_max_length
 *      (attention_mask 1 on bos, the pieces and eos; 0 on padding).
 * words(tokens) groups pieces into words (a piece ending in "</w>" ends a word); tokenText(token) is a
 * piece as readable text.
 * Classic script (no modules): attaches to self.SDXLive; Node can require() it.
 */
(function (root) {
  'use strict';
  const ns = root.SDXLive = root.SDXLive || {};

  const SUFFIX = '</w>';
  // \s in the tokenizers (Oniguruma) patterns is Unicode White_Space (U+0085 yes, U+FEFF no), as here.
  const WHITESPACE_RUN = /\p{White_Space}+/gu;
  const PRETOKEN = /'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\p{White_Space}\p{L}\p{N}]+/gu;
  const ASCII_UPPER = /[A-Z]/;

  /** GPT-2's map from bytes to printable characters (bytes_to_unicode), and its inverse. */
  function byteTables() {
    const bs = [];
    for (let b = 33; b <= 126; b++) bs.push(b);
    for (let b = 161; b <= 172; b++) bs.push(b);
    for (let b = 174; b <= 255; b++) bs.push(b);
    const cs = bs.slice();
    let n = 0;
    for (let b = 0; b < 256; b++) {
      if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
    }
    const encoder = new Array(256);
    const decoder = new Map();
    for (let i = 0; i < bs.length; i++) {
      encoder[bs[i]] = String.fromCharCode(cs[i]);
      decoder.set(String.fromCharCode(cs[i]), bs[i]);
    }
    return { encoder, decoder };
  }
  const BYTES = byteTables();

  const utf8 = new TextEncoder();
  const utf8Decoder = new TextDecoder('utf-8', { ignoreBOM: true });  // keep a U+FEFF that is part of the text

  /** A special token's text: config values are strings or {content: string} (AddedToken) objects. */
  function tokenContent(value) {
    if (value === null || value === undefined) return null;
    if (typeof value === 'string') return value;
    if (typeof value === 'object' && typeof value.content === 'string') return value.content;
    return null;
  }

  function escapeRegExp(s) {
    return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  }

  /** Lower-case one code point at a time (Rust's char::to_lowercase; JS's String.toLowerCase would apply final sigma). */
  function lowerChars(text) {
    let out = '';
    for (const ch of text) out += ch.toLowerCase();
    return out;
  }

  class CLIPTokenizer {
    /**
     * @param {{vocab: Object<string, number>, merges: string, config: object}} data the tokenizer files:
     *   vocab.json's object, merges.txt's text, tokenizer_config.json merged with special_tokens_map.json
     */
    constructor(data) {
      if (!data || typeof data !== 'object') throw new TypeError('CLIPTokenizer needs {vocab, merges, config}');
      const { vocab, merges, config } = data;
      if (!vocab || typeof vocab !== 'object') throw new TypeError('vocab must be an object {token: id} (vocab.json)');
      if (typeof merges !== 'string') throw new TypeError('merges must be the text of merges.txt');
      if (!config || typeof config !== 'object') throw new TypeError('config must be tokenizer_config.json as an object');
      this.config = config;
      this.vocab = new Map(Object.entries(vocab));
      this.idToToken = [];
      for (const [tok, id] of this.vocab) this.idToToken[id] = tok;
      this.bpeRanks = new Map();
      let rank = 0;
      const lines = merges.split('\n');
      for (let i = 0; i < lines.length; i++) {
        const line = lines[i].replace(/\r$/, '');
        if (i === 0 && line.startsWith('#version')) continue;
        if (line.trim() === '') continue;
        const parts = line.split(' ');
        if (parts.length !== 2) throw new Error('merges line ' + (i + 1) + ' is not two symbols: ' + JSON.stringify(line));
        const key = parts[0] + ' ' + parts[1];
        if (!this.bpeRanks.has(key)) this.bpeRanks.set(key, rank);
        rank++;
      }
      const maxLength = config.model_max_length;
      if (!Number.isInteger(maxLength) || maxLength < 2) {
        throw new Error('config.model_max_length=' + String(maxLength) + ' must be an integer >= 2');
      }
      this.modelMaxLength = maxLength;
      const named = {};
      for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
        const tok = tokenContent(config[key]);
        if (tok === null) throw new Error('config.' + key + ' is missing');
        if (!this.vocab.has(tok)) throw new Error('config.' + key + '=' + JSON.stringify(tok) + ' is not in the vocabulary');
        named[key] = tok;
      }
      this.bosToken = named.bos_token;
      this.eosToken = named.eos_token;
      this.padToken = named.pad_token;
      this.unkToken = named.unk_token;
      this.bosTokenId = this.vocab.get(this.bosToken);
      this.eosTokenId = this.vocab.get(this.eosToken);
      this.padTokenId = this.vocab.get(this.padToken);
      this.unkTokenId = this.vocab.get(this.unkToken);
      const specials = new Set(Object.values(named));
      for (const tok of config.additional_special_tokens || []) {
        const t = tokenContent(tok);
        if (t !== null && this.vocab.has(t)) specials.add(t);
      }
      for (const entry of Object.values(config.added_tokens_decoder || {})) {
        const t = tokenContent(entry);
        if (t !== null && this.vocab.has(t)) specials.add(t);
      }
      this.specialTokens = specials;
      const alternatives = Array.from(specials).sort((a, b) => b.length - a.length).map(escapeRegExp);
      this._specialSplit = new RegExp('(' + alternatives.join('|') + ')', 'u');
      this.doLowerCase = config.do_lower_case !== false;
      this._cache = new Map();
    }

    /** Normalise one piece of text (NFC, white space runs to one space, lower case). */
    normalize(text) {
      let s = text.normalize('NFC').replace(WHITESPACE_RUN, ' ');
      if (this.doLowerCase) s = /^[\x00-\x7f]*$/.test(s) ? s.toLowerCase() : lowerChars(s);
      return s;
    }

    /** The pre-tokens of normalised text (CLIP's split pattern). */
    preTokenize(text) {
      return text.match(PRETOKEN) || [];
    }

    /** Byte-pair merges of one pre-token (already in the byte alphabet); returns its pieces. */
    bpe(word) {
      const cached = this._cache.get(word);
      if (cached !== undefined) return cached;
      let parts = Array.from(word);
      parts[parts.length - 1] += SUFFIX;
      const ranks = this.bpeRanks;
      while (parts.length > 1) {
        let best = -1;
        let bestRank = Infinity;
        for (let i = 0; i < parts.length - 1; i++) {
          const r = ranks.get(parts[i] + ' ' + parts[i + 1]);
          if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
        }
        if (best < 0) break;
        const a = parts[best];
        const b = parts[best + 1];
        const merged = [];
        for (let i = 0; i < parts.length;) {
          if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) {
            merged.push(a + b);
            i += 2;
          } else {
            merged.push(parts[i]);
            i += 1;
          }
        }
        parts = merged;
      }
      if (this._cache.size > 20000) this._cache.clear();
      this._cache.set(word, parts);
      return parts;
    }

    /**
     * The BPE pieces of text, without bos/eos, padding or truncation.
     * @param {string} text
     * @returns {string[]} pieces as vocabulary strings (byte alphabet, "</w>" on a word's last piece)
     */
    tokenize(text) {
      if (typeof text !== 'string') throw new TypeError('text must be a string, got ' + typeof text);
      const out = [];
      const segments = text.split(this._specialSplit);  // odd indices are the special tokens themselves
      for (let s = 0; s < segments.length; s++) {
        const seg = segments[s];
        if (s % 2 === 1) { out.push(seg); continue; }
        if (seg === '') continue;
        for (const pre of this.preTokenize(this.normalize(seg))) {
          let mapped = '';
          for (const byte of utf8.encode(pre)) mapped += BYTES.encoder[byte];
          for (const piece of this.bpe(mapped)) out.push(this.vocab.has(piece) ? piece : this.unkToken);
        }
      }
      return out;
    }

    /**
     * Encode a prompt as the pipeline does.
     * @param {string} text the prompt
     * @param {{padding?: 'max_length'|false, truncation?: boolean, maxLength?: number}} [options]
     *   defaults: padding 'max_length', truncation true, maxLength config.model_max_length
     * @returns {{input_ids: number[], tokens: string[], attention_mask: number[], truncated: string[]}}
     *   ids, their vocabulary strings and the mask; truncated lists the pieces cut off
     */
    encode(text, options = {}) {
      const padding = options.padding === undefined ? 'max_length' : options.padding;
      const truncation = options.truncation === undefined ? true : options.truncation;
      const maxLength = options.maxLength === undefined ? this.modelMaxLength : options.maxLength;
      if (padding !== 'max_length' && padding !== false) {
        throw new Error("padding=" + JSON.stringify(padding) + " is not supported; use 'max_length' or false");
      }
      if (!Number.isInteger(maxLength) || maxLength < 2) throw new RangeError('maxLength=' + maxLength + ' must be an integer >= 2');
      let pieces = this.tokenize(text);
      let truncated = [];
      if (truncation && pieces.length > maxLength - 2) {
        truncated = pieces.slice(maxLength - 2);
        pieces = pieces.slice(0, maxLength - 2);
      }
      const tokens = [this.bosToken, ...pieces, this.eosToken];
      const mask = tokens.map(() => 1);
      if (padding === 'max_length') {
        while (tokens.length < maxLength) { tokens.push(this.padToken); mask.push(0); }
      }
      const ids = tokens.map((t) => this.vocab.get(t));
      return { input_ids: ids, tokens, attention_mask: mask, truncated };
    }

    /** Vocabulary strings of ids. */
    convertIdsToTokens(ids) {
      return Array.from(ids, (id) => this.idToToken[id]);
    }

    /** A piece as readable text: its bytes decoded as UTF-8, "</w>" dropped (special tokens as they are). */
    tokenText(token) {
      if (this.specialTokens.has(token)) return token;
      const body = token.endsWith(SUFFIX) ? token.slice(0, -SUFFIX.length) : token;
      const bytes = [];
      for (const ch of body) {
        const b = BYTES.decoder.get(ch);
        if (b === undefined) return body;
        bytes.push(b);
      }
      return utf8Decoder.decode(new Uint8Array(bytes));
    }

    /**
     * Group pieces into words: consecutive pieces up to one ending in "</w>"; special tokens are left out.
     * @param {string[]} tokens pieces, e.g. encode(text).tokens
     * @returns {{word: string, indices: number[]}[]} each word's text and the positions of its pieces
     */
    words(tokens) {
      const out = [];
      let current = [];
      const flush = () => {
        if (current.length === 0) return;
        const body = current.map((i) => tokens[i]).join('');
        out.push({ word: this.tokenText(body), indices: current });
        current = [];
      };
      for (let i = 0; i < tokens.length; i++) {
        const t = tokens[i];
        if (this.specialTokens.has(t)) { flush(); continue; }
        current.push(i);
        if (t.endsWith(SUFFIX)) flush();
      }
      flush();
      return out;
    }
  }

  ns.CLIPTokenizer = CLIPTokenizer;
  if (typeof module === 'object' && module.exports) module.exports = { CLIPTokenizer };
})(typeof self !== 'undefined' ? self : globalThis);
