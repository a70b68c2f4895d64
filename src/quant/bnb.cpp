// bitsandbytes' NF4 / FP4 / double-quantized absmax / LLM.int8 formats in ATen. The arithmetic
// follows bitsandbytes' CPU path step for step (float32 throughout, the block scale applied as a
// multiplication by its reciprocal for whole blocks and as a division for the last partial one,
// nearest code by bucketing at the midpoints of the sorted code, ties to the lower value), so the
// packed bytes come out identical.
#include "llmtune/quant/bnb.h"

#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/bucketize.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/round.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>

#include <cmath>
#include <map>
#include <tuple>
#include <string>
#include <utility>

#include "llmtune/ops/four_bit.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::quant {
namespace {

// Midpoints of the sorted code and, for each sorted position, the code index it came from.
std::pair<at::Tensor, at::Tensor> buckets(const at::Tensor& code) {
  auto [sorted, order] = at::sort(code, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const int64_t n = sorted.size(0);
  at::Tensor mid = (sorted.narrow(0, 0, n - 1) + sorted.narrow(0, 1, n - 1)) / 2;
  return {mid, order};
}

void check_blocksize(int64_t blocksize, int64_t low) {
  if (blocksize < low || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0)
    throw QuantError("block size " + std::to_string(blocksize) + " is not a power of two in [" + std::to_string(low) +
                     ", 4096]");
}

// The blocks' absmax and the values scaled into [-1, 1], as bitsandbytes computes them.
std::pair<at::Tensor, at::Tensor> scale_blocks(const at::Tensor& x, int64_t blocksize) {
  const at::Tensor flat = x.reshape({-1}).to(at::kFloat);
  const int64_t n = flat.numel(), rem = n % blocksize, full = n - rem;
  at::Tensor whole = flat.narrow(0, 0, full).view({full / blocksize, blocksize});
  at::Tensor absmax = at::amax(whole.abs(), {1});
  at::Tensor scaled = at::clamp(whole * at::reciprocal(absmax.clamp_min(1e-38)).unsqueeze(1), -1, 1).reshape({-1});
  if (rem) {
    at::Tensor tail = flat.narrow(0, full, rem);
    at::Tensor am = tail.abs().max().clamp_min(1e-38);
    absmax = at::cat({absmax, am.unsqueeze(0)});
    scaled = at::cat({scaled, at::clamp(tail / am, -1, 1)});
  }
  return {absmax, scaled};
}

// The code table on `device`, made once per device and type: a forward dequantizes every layer,
// and a host-to-device copy per call would synchronise the GPU each time.
const at::Tensor& four_bit_code_on(FourBit type, const c10::Device& device) {
  static thread_local std::map<std::pair<int, std::string>, at::Tensor> cache;
  at::Tensor& t = cache[{static_cast<int>(type), device.str()}];
  if (!t.defined()) t = four_bit_code(type).to(device);
  return t;
}


int64_t numel_of(const FourBitState& s) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  return n;
}

// The packed codes as flat contiguous bytes (another bnb_4bit_quant_storage reinterpreted), after
// checking that they and the absmax count fit the state's shape and block size.
at::Tensor packed_bytes(const FourBitTensor& q) {
  const FourBitState& s = q.state;
  const int64_t n = numel_of(s);
  at::Tensor bytes = q.packed.contiguous().view({-1});
  if (bytes.scalar_type() != at::kByte) bytes = bytes.view(at::kByte);
  if (bytes.numel() * 2 < n)
    throw QuantError("4-bit weight of shape " + c10::str(at::IntArrayRef(s.shape)) + " needs " + std::to_string((n + 1) / 2) +
                     " packed bytes, got " + std::to_string(bytes.numel()));
  const int64_t blocks = (n + s.blocksize - 1) / s.blocksize;
  if (s.absmax.numel() != blocks)
    throw QuantError("4-bit weight of shape " + c10::str(at::IntArrayRef(s.shape)) + " in blocks of " +
                     std::to_string(s.blocksize) + " needs " + std::to_string(blocks) + " absmax values, got " +
                     std::to_string(s.absmax.numel()));
  return bytes;
}

// A state tensor on the packed codes' device: moved there per call only when the caller left it
// elsewhere (said once, since each call then copies).
at::Tensor on_device(const at::Tensor& t, const c10::Device& device, at::ScalarType dtype) {
  if (t.device() == device && t.scalar_type() == dtype) return t.contiguous();
  if (t.device() != device && log::first_time("bnb.state_device"))
    spdlog::warn("4-bit weight: its quantization state is on {} but the packed codes on {}; copying it per call "
                 "(move the whole layer to one device)", t.device().str(), device.str());
  return t.to(device, dtype).contiguous();
}

ops::FourBitBlocks blocks_on_device(const FourBitTensor& q, const at::Tensor& bytes) {
  const FourBitState& s = q.state;
  const c10::Device device = bytes.device();
  ops::FourBitBlocks w;
  w.packed = bytes;
  w.code = four_bit_code_on(s.type, device);
  w.blocksize = s.blocksize;
  w.numel = numel_of(s);
  if (s.nested) {
    w.absmax = on_device(s.absmax, device, at::kByte);
    w.nested_code = on_device(s.nested_code, device, at::kFloat);
    w.nested_absmax = on_device(s.nested_absmax, device, at::kFloat);
    w.nested_offset = s.nested_offset;
    w.nested_blocksize = s.nested_blocksize;
  } else {
    w.absmax = on_device(s.absmax, device, at::kFloat);
  }
  return w;
}

// The CPU loop (ops::four_bit_quantize_cpu) for CPU tensors of the usual float dtypes when `fast`,
// else the ATen ops; both give the same bytes and absmax.
FourBitTensor quantize_4bit_impl(const at::Tensor& weight, FourBit type, int64_t blocksize, bool double_quant, bool fast) {
  check_blocksize(blocksize, 32);
  if (!at::isFloatingType(weight.scalar_type()))
    throw QuantError("4-bit quantization needs a floating-point weight, got " + std::string(c10::toString(weight.scalar_type())));
  FourBitTensor out;
  FourBitState& s = out.state;
  s.type = type;
  s.blocksize = blocksize;
  s.dtype = weight.scalar_type();
  s.shape = weight.sizes().vec();
  const auto st = weight.scalar_type();
  at::Tensor absmax;
  if (fast && weight.is_cpu() && (st == at::kFloat || st == at::kBFloat16 || st == at::kHalf)) {
    const int64_t n = weight.numel();
    auto [mid, order] = buckets(four_bit_code(type));
    out.packed = at::empty({(n + 1) / 2, 1}, at::kByte);
    absmax = at::empty({(n + blocksize - 1) / blocksize}, at::kFloat);
    at::Tensor packed_flat = out.packed.view({-1});
    ops::four_bit_quantize_cpu(weight.contiguous().view({-1}), mid.contiguous(), order.contiguous(), blocksize,
                               packed_flat, absmax);
  } else {
    at::Tensor scaled;
    std::tie(absmax, scaled) = scale_blocks(weight, blocksize);
    if (scaled.numel() % 2) scaled = at::constant_pad_nd(scaled, {0, 1}, 0);
    auto [mid, order] = buckets(four_bit_code(type).to(weight.device()));
    at::Tensor q = at::bucketize(scaled, mid, /*out_int32=*/false);
    if (type != FourBit::NF4) q = order.index_select(0, q);
    q = q.to(at::kByte);
    const int64_t pairs = q.numel() / 2;
    out.packed = (q.slice(0, 0, 2 * pairs, 2).__lshift__(4) | q.slice(0, 1, 2 * pairs, 2)).unsqueeze(1);
  }
  if (double_quant) {
    s.nested = true;
    s.nested_offset = absmax.mean().item<double>();
    s.nested_code = dynamic_map().to(weight.device());
    auto [codes, nested_absmax] = quantize_blockwise(absmax - s.nested_offset, s.nested_code, s.nested_blocksize);
    s.absmax = codes;
    s.nested_absmax = nested_absmax;
  } else {
    s.absmax = absmax;
  }
  return out;
}

}  // namespace

FourBit four_bit_from_name(const std::string& name) {
  if (name == "nf4") return FourBit::NF4;
  if (name == "fp4") return FourBit::FP4;
  throw QuantError("4-bit type '" + name + "' is not known (nf4 or fp4)");
}

const char* four_bit_name(FourBit type) { return type == FourBit::NF4 ? "nf4" : "fp4"; }

at::Tensor four_bit_code(FourBit type) {
  // NF4: the normal-float levels of the QLoRA paper (FORMATS.md §5.1). FP4: sign, two exponent
  // bits and one mantissa bit, in bit-pattern order (sign = index 8), divided by the largest (12) in
  // float32 as bitsandbytes does.
  static const std::vector<float> nf4 = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
  static const std::vector<float> fp4 = {0.0f,  0.0625f,  8.0f,  12.0f,  4.0f,  6.0f,  2.0f,  3.0f,
                                         -0.0f, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};
  if (type == FourBit::NF4) return at::tensor(nf4, at::kFloat);
  return at::tensor(fp4, at::kFloat) / 12.0f;
}

at::Tensor dynamic_map() {
  // Seven exponents (10^-6 .. 10^0), each with 2^i fraction levels: the midpoints of
  // linspace(0.1, 1, 2^i + 1), both signs; then 0 and 1. float32 arithmetic as bitsandbytes'.
  std::vector<at::Tensor> parts;
  for (int i = 0; i < 7; ++i) {
    at::Tensor b = at::linspace(0.1, 1, (int64_t{1} << i) + 1, at::kFloat);
    at::Tensor means = (b.narrow(0, 0, b.size(0) - 1) + b.narrow(0, 1, b.size(0) - 1)) / 2.0;
    const double scale = std::pow(10.0, i - 6);
    parts.push_back(means * scale);
    parts.push_back(means * -scale);
  }
  parts.push_back(at::tensor(std::vector<float>{0.0f, 1.0f}, at::kFloat));
  return std::get<0>(at::sort(at::cat(parts)));
}

std::pair<at::Tensor, at::Tensor> quantize_blockwise(const at::Tensor& x, const at::Tensor& code, int64_t blocksize) {
  check_blocksize(blocksize, 64);
  auto [absmax, scaled] = scale_blocks(x, blocksize);
  const at::Tensor mid = std::get<0>(buckets(code.to(x.device(), at::kFloat)));
  at::Tensor q = at::bucketize(scaled, mid, /*out_int32=*/true).to(at::kByte);
  return {q.reshape(x.sizes()), absmax};
}

at::Tensor dequantize_blockwise(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& code, int64_t blocksize) {
  const at::Tensor values = code.to(codes.device(), at::kFloat).index_select(0, codes.reshape({-1}).to(at::kLong));
  const int64_t n = values.numel(), rem = n % blocksize, full = n - rem;
  at::Tensor out = (values.narrow(0, 0, full).view({full / blocksize, blocksize}) *
                    absmax.narrow(0, 0, full / blocksize).unsqueeze(1)).reshape({-1});
  if (rem) out = at::cat({out, values.narrow(0, full, rem) * absmax[full / blocksize]});
  return out.reshape(codes.sizes());
}

FourBitTensor quantize_4bit_reference(const at::Tensor& weight, FourBit type, int64_t blocksize, bool double_quant) {
  return quantize_4bit_impl(weight, type, blocksize, double_quant, /*fast=*/false);
}

FourBitTensor quantize_4bit(const at::Tensor& weight, FourBit type, int64_t blocksize, bool double_quant) {
  return quantize_4bit_impl(weight, type, blocksize, double_quant, /*fast=*/true);
}

at::Tensor four_bit_absmax(const FourBitState& s) {
  if (!s.nested) return s.absmax.to(at::kFloat);
  return dequantize_blockwise(s.absmax, s.nested_absmax, s.nested_code, s.nested_blocksize) + s.nested_offset;
}

at::Tensor dequantize_4bit_reference(const FourBitTensor& q, at::ScalarType dtype) {
  const FourBitState& s = q.state;
  const at::Tensor bytes = packed_bytes(q);
  const int64_t n = numel_of(s);
  const at::Tensor idx = at::stack({bytes.__rshift__(4), bytes.__and__(0xF)}, 1).reshape({-1}).narrow(0, 0, n).to(at::kLong);
  const at::Tensor values = four_bit_code_on(s.type, bytes.device()).index_select(0, idx);
  const at::Tensor absmax = four_bit_absmax(s).to(bytes.device());
  const int64_t rem = n % s.blocksize, full = n - rem;
  at::Tensor out = (values.narrow(0, 0, full).view({full / s.blocksize, s.blocksize}) *
                    absmax.narrow(0, 0, full / s.blocksize).unsqueeze(1)).reshape({-1});
  if (rem) out = at::cat({out, values.narrow(0, full, rem) * absmax[full / s.blocksize]});
  return out.reshape(s.shape).to(dtype == at::ScalarType::Undefined ? s.dtype : dtype);
}

bool dequantize_4bit_has_fast_path(const FourBitTensor& q, at::ScalarType dtype) {
  return ops::four_bit_dequantize_fast(q.packed.device()) &&
         (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf);
}

void dequantize_4bit_out(const FourBitTensor& q, at::Tensor& out) {
  const at::Tensor bytes = packed_bytes(q);
  ops::FourBitBlocks w = blocks_on_device(q, bytes);
  ops::four_bit_dequantize_out(w, out);
}

at::Tensor dequantize_4bit(const FourBitTensor& q, at::ScalarType dtype) {
  if (dtype == at::ScalarType::Undefined) dtype = q.state.dtype;
  if (!dequantize_4bit_has_fast_path(q, dtype)) return dequantize_4bit_reference(q, dtype);
  at::Tensor out = at::empty(q.state.shape, q.packed.options().dtype(dtype));
  dequantize_4bit_out(q, out);
  return out;
}

ops::FourBitBlocks four_bit_blocks(const FourBitTensor& q) { return blocks_on_device(q, packed_bytes(q)); }

Int8Tensor quantize_int8(const at::Tensor& weight) {
  if (weight.dim() != 2) throw QuantError("int8 quantization needs a 2-D weight, got " + std::to_string(weight.dim()) + " dimensions");
  Int8Tensor out;
  out.scb = at::amax(weight.abs(), {1}).to(at::kFloat);
  out.weight = at::round(weight * (at::reciprocal(out.scb) * 127.0).unsqueeze(1)).to(at::kChar);
  return out;
}

at::Tensor dequantize_int8(const Int8Tensor& q, at::ScalarType dtype) {
  // bitsandbytes' int8_vectorwise_dequant: times the row absmax, then times 1/127 (as a float32).
  return (q.weight * q.scb.to(at::kFloat).unsqueeze(1) * 7.874015718698502e-3).to(dtype);
}

}  // namespace llmtune::quant
