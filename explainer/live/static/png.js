/*
 * png.js: RGBA pixels as PNG bytes, synchronously (SDXLive.encodePNG), for the live page's frames.
 *
 * canvas.toBlob encodes off the page's thread and answers a task later: a wait per frame while the model
 * runs. These frames are small (the latent's size, or the decoded image's), so the page writes them
 * itself: filter 0 rows in stored (uncompressed) deflate blocks, exact and lossless, a few microseconds.
 *
 * SDXLive.encodePNG(rgba, width, height)
 *     rgba: Uint8Array | Uint8ClampedArray of width * height * 4 bytes [H, W, RGBA]
 *     → Uint8Array, a PNG (8-bit RGBA, colour type 6) any browser or PIL decodes to the same pixels.
 */
(function (root) {
  'use strict';
  const ns = (root.SDXLive = root.SDXLive || {});

  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes, start, end) {
    let c = 0xffffffff;
    for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  const STORED_MAX = 65535; // bytes in one stored deflate block

  function encodePNG(rgba, width, height) {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
      throw new RangeError(`width and height must be positive whole numbers, got ${width} x ${height}`);
    }
    if (!rgba || rgba.length !== width * height * 4) {
      throw new RangeError(`rgba must hold width * height * 4 = ${width * height * 4} bytes, got ${rgba ? rgba.length : rgba}`);
    }
    const row = 4 * width + 1; // a filter byte, then the row's pixels
    const raw = new Uint8Array(row * height); // [H, 1 + W * 4]
    for (let y = 0; y < height; y++) raw.set(rgba.subarray(4 * width * y, 4 * width * (y + 1)), y * row + 1);
    const blocks = Math.ceil(raw.length / STORED_MAX);
    const zlen = 2 + raw.length + 5 * blocks + 4; // zlib header, blocks with their 5-byte headers, Adler-32
    const out = new Uint8Array(8 + (12 + 13) + (12 + zlen) + 12);
    const view = new DataView(out.buffer);
    out.set([137, 80, 78, 71, 13, 10, 26, 10], 0);
    let at = 8;
    function chunk(type, length, fill) {
      view.setUint32(at, length);
      for (let i = 0; i < 4; i++) out[at + 4 + i] = type.charCodeAt(i);
      fill(at + 8);
      view.setUint32(at + 8 + length, crc32(out, at + 4, at + 8 + length));
      at += 12 + length;
    }
    chunk('IHDR', 13, (p) => {
      view.setUint32(p, width);
      view.setUint32(p + 4, height);
      out.set([8, 6, 0, 0, 0], p + 8); // 8 bits, RGBA, deflate, adaptive filtering, no interlace
    });
    chunk('IDAT', zlen, (p) => {
      out[p] = 0x78; out[p + 1] = 0x01; // deflate, 32 KiB window, no dictionary
      let q = p + 2;
      for (let i = 0, b = 0; b < blocks; b++) {
        const n = Math.min(STORED_MAX, raw.length - i);
        out[q] = b === blocks - 1 ? 1 : 0; // BFINAL, BTYPE 00 (stored)
        out[q + 1] = n & 255; out[q + 2] = n >>> 8; out[q + 3] = ~n & 255; out[q + 4] = (~n >>> 8) & 255;
        out.set(raw.subarray(i, i + n), q + 5);
        q += 5 + n; i += n;
      }
      let s1 = 1, s2 = 0;
      for (let i = 0; i < raw.length; i++) { s1 = (s1 + raw[i]) % 65521; s2 = (s2 + s1) % 65521; }
      view.setUint32(q, ((s2 << 16) | s1) >>> 0);
    });
    chunk('IEND', 0, () => {});
    return out;
  }

  ns.encodePNG = encodePNG;
  if (typeof module === 'object' && module.exports) module.exports = { encodePNG };
})(typeof self !== 'undefined' ? self : globalThis);
