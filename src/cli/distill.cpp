// `llmtune distill`: finetune's schema plus the teacher.* and distill.* keys, and --cache-teacher,
// which runs the teacher once over the data and writes its top-k cache instead of training.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <memory>

#include "common.h"
#include "training.h"
#include "llmtune/io/atomic_file.h"
#include "llmtune/pipelines/distill.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {
namespace {

struct DistillFlags : TrainingFlags {
  std::optional<std::string> teacher, cache_teacher;
};

}  // namespace

config::Schema distill_schema() {
  using config::Type;
  config::Schema s = finetune_schema();
  s.add({.name = "teacher.path", .type = Type::String, .default_value = std::string(""),
         .help = "the teacher: a model directory, Hugging Face cache repo id or .gguf file (any model llmtune loads); "
                 "needed unless teacher.cache is set"});
  s.add({.name = "teacher.adapter", .type = Type::String, .default_value = std::string(""),
         .help = "a PEFT adapter applied to the teacher"});
  s.add({.name = "teacher.device", .type = Type::String, .default_value = std::string("auto"),
         .help = "the teacher's device (cpu, cuda, cuda:1, mps); auto: the student's"});
  s.add({.name = "teacher.dtype", .type = Type::String, .default_value = std::string("auto"),
         .help = "the teacher's compute dtype; auto: the student's", .choices = {"auto", "fp32", "bf16", "fp16"}});
  add_quantize_on_load_keys(s, "teacher.", "quant_blocksize");
  s.add({.name = "teacher.cache", .type = Type::String, .default_value = std::string(""),
         .help = "train from a teacher cache built by --cache-teacher instead of running the teacher"});
  s.add({.name = "distill.loss", .type = Type::String, .default_value = std::string("forward_kl"),
         .help = "forward_kl: KL(teacher ‖ student); reverse_kl: KL(student ‖ teacher); jsd: generalized Jensen-Shannon "
                 "(distill.beta), as GKD",
         .choices = {"forward_kl", "reverse_kl", "jsd"}});
  s.add({.name = "distill.beta", .type = Type::Float, .default_value = 0.5,
         .help = "jsd: the mixture weight of the teacher (0: forward KL, 1: reverse KL)", .min = 0, .max = 1});
  s.add({.name = "distill.temperature", .type = Type::Float, .default_value = 1.0,
         .help = "softmax temperature of both models' logits in the soft loss (scaled by T²)", .min = 0, .min_exclusive = true});
  s.add({.name = "distill.kd_ratio", .type = Type::Float, .default_value = 0.5,
         .help = "weight of the soft loss; the cross-entropy on the labels gets 1 - kd_ratio", .min = 0, .max = 1});
  s.add({.name = "distill.vocab", .type = Type::String, .default_value = std::string("strict"),
         .help = "strict: teacher and student vocabularies must be equal; truncate: compare the shared prefix when it is "
                 "identical token for token (padded embedding rows)",
         .choices = {"strict", "truncate"}});
  s.add({.name = "distill.top_k", .type = Type::Int, .default_value = int64_t{64},
         .help = "teacher cache: log-probabilities kept per position (the rest is one bucket)", .min = 1});
  return s;
}

std::shared_ptr<pipelines::DistillParams> distill_params(const config::Config& cfg, const config::Schema& schema) {
  auto d = std::make_shared<pipelines::DistillParams>();
  d->teacher = cfg.get_string("teacher.path");
  d->teacher_adapter = cfg.get_string("teacher.adapter");
  d->teacher_device = cfg.get_string("teacher.device");
  d->teacher_dtype = cfg.get_string("teacher.dtype");
  d->teacher_quantize = quantize_on_load(cfg, "teacher.", "quant_blocksize");
  d->cache = cfg.get_string("teacher.cache");
  d->loss.divergence = train::divergence_from_name(cfg.get_string("distill.loss"));
  d->loss.beta = cfg.get_float("distill.beta");
  d->loss.temperature = cfg.get_float("distill.temperature");
  d->loss.kd_ratio = cfg.get_float("distill.kd_ratio");
  d->truncate_vocab = cfg.get_string("distill.vocab") == "truncate";
  d->top_k = cfg.get_int("distill.top_k");
  if (cfg.get_string("distill.loss") != "jsd" && cfg.value("distill.beta") != *schema.find("distill.beta")->default_value)
    throw ConfigError("distill.beta is set (" + cfg.origin("distill.beta").describe() + ") but distill.loss is " +
                      cfg.get_string("distill.loss") + ": it weighs jsd only; remove it, or set distill.loss: jsd");
  return d;
}

Command register_distill(CLI::App& root) {
  auto* app = root.add_subcommand("distill", "knowledge distillation from a teacher into a student (full, LoRA/DoRA or QLoRA), "
                                              "online or from a cache of the teacher's top-k log-probabilities");
  auto options = std::make_shared<CommonOptions>();
  auto flags = std::make_shared<DistillFlags>();
  add_common_options(app, *options);
  add_training_flags(app, *flags, "the student (model.path)");
  app->add_option("--teacher", flags->teacher, "the teacher (teacher.path)");
  app->add_option("--cache-teacher", flags->cache_teacher,
                  "run the teacher once over the training data and write its top-k cache to this directory, then stop "
                  "(train from it with teacher.cache)");
  return {app, [options, flags] {
            FlagValues extra = training_flag_values(*flags, *options);
            add_flag_value(extra, "teacher.path", flags->teacher, "--teacher");
            const config::Schema schema = distill_schema();
            config::Config cfg = resolve_config(schema, *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;

            pipelines::FinetuneParams p = finetune_params(cfg, schema);
            p.command = "distill";
            const std::shared_ptr<pipelines::DistillParams> d = distill_params(cfg, schema);
            p.distill = d;

            if (flags->cache_teacher) {
              if (flags->resume_option->count() > 0 || flags->force_option->count() > 0)
                throw UsageError("--cache-teacher builds a teacher cache: --resume and --force are for training runs");
              if (d->teacher.empty()) throw ConfigError("--cache-teacher needs the teacher: set teacher.path (or --teacher)");
              if (!d->cache.empty())
                throw ConfigError("--cache-teacher builds a cache, teacher.cache reads one (" + cfg.origin("teacher.cache").describe() +
                                  "): remove teacher.cache");
              const std::filesystem::path out = *flags->cache_teacher;
              if (io::same_or_inside(out, p.model) || io::same_or_inside(out, d->teacher) || io::same_or_inside(p.data.path, out))
                throw UsageError("--cache-teacher " + out.string() + ": would write over the models or the data; choose a new directory");
              // The cache directory is replaced as a whole: only an earlier cache may stand there.
              if (std::filesystem::exists(out) &&
                  (!std::filesystem::is_directory(out) || (!std::filesystem::is_empty(out) && !std::filesystem::exists(out / "teacher_cache.json"))))
                throw UsageError("--cache-teacher " + out.string() + ": exists and is not a teacher cache; choose a new directory");
              const nlohmann::json summary = pipelines::build_teacher_cache(p, out);
              if (options->json) std::cout << summary.dump(2) << "\n";
              else std::cout << "teacher cache: " << summary["rows"].get<int64_t>() << " positions, top " << summary["top_k"].get<int64_t>()
                             << " -> " << out.string() << "\n";
              return 0;
            }
            run_training(p, cfg, *flags, options->json);
            return 0;
          }};
}

}  // namespace llmtune::cli
