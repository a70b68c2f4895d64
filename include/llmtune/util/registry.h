// A process-wide list of named descriptions (model families, adapter methods): the built-ins, then
// any registered at run time (a test's own family or method). Entries never move once added, so
// pointers handed out stay valid as the list grows.
#pragma once

#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace llmtune {

template <class T>
class Registry {
 public:
  explicit Registry(std::vector<T> builtins) : items_(std::make_move_iterator(builtins.begin()), std::make_move_iterator(builtins.end())) {}

  // Adds `item`, or replaces the entry whose key(entry) equals key(item).
  template <class Key>
  void put(T item, Key key) {
    std::lock_guard lock(mutex_);
    for (auto& entry : items_) {
      if (key(entry) == key(item)) {
        entry = std::move(item);
        return;
      }
    }
    items_.push_back(std::move(item));
  }

  // The first entry with pred(entry); nullptr when none.
  template <class Pred>
  const T* find(Pred pred) const {
    std::lock_guard lock(mutex_);
    for (const auto& entry : items_)
      if (pred(entry)) return &entry;
    return nullptr;
  }

  // name(entry) of every entry with keep(entry), in registration order.
  template <class Keep, class Name>
  std::vector<std::string> names(Keep keep, Name name) const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& entry : items_)
      if (keep(entry)) out.push_back(name(entry));
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::deque<T> items_;
};

}  // namespace llmtune
