// The built-in adapter methods, listed by the registry in method.cpp. A new method is a new file
// implementing AdapterMethod plus one line there (or a register_adapter_method call).
#pragma once

#include "llmtune/peft/method.h"

namespace llmtune::peft {

AdapterMethodType lora_method_type();

}  // namespace llmtune::peft
