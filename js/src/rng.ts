/** numpy's default generator, so that a seed draws the same numbers here as in the Python runtime:
 * `new NumpyRandom(seed).random()` equals `np.random.default_rng(seed).random()`.
 *
 * default_rng(seed) is PCG64 (a 128-bit LCG with the XSL-RR output) seeded by SeedSequence, which
 * hashes the seed's 32-bit words into a pool of four and draws the 128-bit state and increment
 * from it (numpy/random/bit_generator.pyx, _pcg64.pyx, pcg64.h). random() is the top 53 bits of one
 * 64-bit output. BigInt is slow, but the sampler draws once per token. Checked against numpy in
 * the test vectors (js/test/make_vectors.py). */

const MASK32 = 0xffffffffn;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const PCG_MULTIPLIER = (0x2360ed051fc65da4n << 64n) | 0x4385df649fccf645n;

// SeedSequence constants
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const POOL_SIZE = 4;

const mul32 = (a: number, b: number): number => Math.imul(a, b) >>> 0;

/** The little-endian 32-bit words of a non-negative integer (0 is one word). */
function words32(seed: bigint): number[] {
  const words: number[] = [];
  do {
    words.push(Number(seed & MASK32));
    seed >>= 32n;
  } while (seed > 0n);
  return words;
}

/** SeedSequence(seed).pool: the entropy hashed and mixed into four 32-bit words. */
function seedPool(seed: bigint): number[] {
  const entropy = words32(seed);
  let hashConst = INIT_A;
  const hashmix = (value: number): number => {
    value = (value ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_A);
    value = mul32(value, hashConst);
    return (value ^ (value >>> 16)) >>> 0;
  };
  const mix = (x: number, y: number): number => {
    const result = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
    return (result ^ (result >>> 16)) >>> 0;
  };
  const pool = Array.from({ length: POOL_SIZE }, (_, i) => hashmix(i < entropy.length ? entropy[i] : 0));
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  }
  for (let src = POOL_SIZE; src < entropy.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  }
  return pool;
}

/** SeedSequence.generate_state(n, uint64): 2n 32-bit words drawn from the pool, paired little-endian. */
function generateState64(pool: number[], n: number): bigint[] {
  let hashConst = INIT_B;
  const words: number[] = [];
  for (let i = 0; i < 2 * n; i++) {
    let value = (pool[i % pool.length] ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_B);
    value = mul32(value, hashConst);
    words.push((value ^ (value >>> 16)) >>> 0);
  }
  return Array.from({ length: n }, (_, i) => BigInt(words[2 * i]) | (BigInt(words[2 * i + 1]) << 32n));
}

export class NumpyRandom {
  private state: bigint;
  private readonly increment: bigint;

  constructor(seed: number | bigint) {
    const value = BigInt(seed);
    if (value < 0n) throw new RangeError(`a seed must be a non-negative integer, got ${seed}`);
    const [s0, s1, i0, i1] = generateState64(seedPool(value), 4);
    // pcg64_set_seed: state and sequence are 128-bit numbers, high word first
    this.increment = ((((i0 << 64n) | i1) << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.step();
    this.state = (this.state + ((s0 << 64n) | s1)) & MASK128;
    this.step();
  }

  private step(): void {
    this.state = (this.state * PCG_MULTIPLIER + this.increment) & MASK128;
  }

  /** The next 64-bit output: step, then XSL-RR of the new state. */
  nextUint64(): bigint {
    this.step();
    const xored = ((this.state >> 64n) ^ this.state) & MASK64;
    const rotation = this.state >> 122n;
    return ((xored >> rotation) | (xored << ((64n - rotation) & 63n))) & MASK64;
  }

  /** A float in [0, 1) with 53 random bits, as numpy's Generator.random(). */
  random(): number {
    return Number(this.nextUint64() >> 11n) / 9007199254740992;
  }
}
