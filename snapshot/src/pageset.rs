//! A set of guest RAM pages (4 KiB each, indices into the flat RAM offset space), as a bitmap.

/// A bitmap over the pages `0..pages()` of guest RAM. Bit `i % 64` of word `i / 64` is page `i`
/// (the layout of KVM's dirty log).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PageSet {
    words: Vec<u64>,
    pages: u64,
}

fn words_for(pages: u64) -> usize {
    pages.div_ceil(64) as usize
}

impl PageSet {
    /// An empty set over `pages` pages.
    pub fn new(pages: u64) -> Self {
        PageSet {
            words: vec![0; words_for(pages)],
            pages,
        }
    }

    /// The set of all `pages` pages.
    pub fn full(pages: u64) -> Self {
        let mut s = PageSet {
            words: vec![u64::MAX; words_for(pages)],
            pages,
        };
        s.clear_tail();
        s
    }

    /// A set over `pages` pages from bitmap words. Missing words count as empty; words and bits
    /// past `pages` are dropped.
    pub fn from_words(mut words: Vec<u64>, pages: u64) -> Self {
        words.resize(words_for(pages), 0);
        let mut s = PageSet { words, pages };
        s.clear_tail();
        s
    }

    /// Adds the first `count` bits of `words` (same bit layout) as the pages
    /// `first_page..first_page + count`: for merging a per-region dirty bitmap into the flat
    /// RAM space. Bits that fall past `pages()` are ignored; returns how many were.
    pub fn insert_words_at(&mut self, first_page: u64, words: &[u64], count: u64) -> u64 {
        let mut dropped = 0;
        for (wi, &w) in words.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let rel = wi as u64 * 64 + bit;
                if rel >= count {
                    break;
                }
                match first_page.checked_add(rel) {
                    Some(p) if self.insert(p) => {}
                    _ => dropped += 1,
                }
            }
        }
        dropped
    }

    fn clear_tail(&mut self) {
        let rem = self.pages % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// The number of pages the set ranges over (not the number present).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The number of pages present.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The number of pages present (same as [`PageSet::count`]).
    pub fn len(&self) -> u64 {
        self.count()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Adds `page`; returns false (and changes nothing) when it is past `pages()`.
    pub fn insert(&mut self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        self.words[(page / 64) as usize] |= 1 << (page % 64);
        true
    }

    pub fn contains(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Adds every page of `other`; the set grows to cover `other.pages()` if that is larger.
    pub fn union(&mut self, other: &PageSet) {
        if other.pages > self.pages {
            self.pages = other.pages;
            self.words.resize(words_for(other.pages), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    /// The bitmap words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The pages present, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut bits = w;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                Some(wi as u64 * 64 + bit)
            })
        })
    }

    /// Maximal runs of consecutive pages present, ascending, as `(first page, page count)`.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut pages = self.iter().peekable();
        std::iter::from_fn(move || {
            let start = pages.next()?;
            let mut len = 1;
            while pages.peek() == Some(&(start + len)) {
                pages.next();
                len += 1;
            }
            Some((start, len))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_count_and_bounds() {
        let mut s = PageSet::new(100);
        assert!(s.insert(0));
        assert!(s.insert(99));
        assert!(!s.insert(100));
        assert!(s.contains(99) && !s.contains(100) && !s.contains(u64::MAX));
        assert_eq!(s.count(), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 99]);
    }

    #[test]
    fn from_words_drops_bits_past_the_end_and_pads() {
        let s = PageSet::from_words(vec![u64::MAX, u64::MAX, u64::MAX], 70);
        assert_eq!(s.count(), 70);
        let s = PageSet::from_words(vec![1], 200);
        assert_eq!(s.words().len(), 4);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn runs_group_consecutive_pages() {
        let mut s = PageSet::new(300);
        for p in [1, 2, 3, 63, 64, 65, 200] {
            s.insert(p);
        }
        assert_eq!(
            s.runs().collect::<Vec<_>>(),
            vec![(1, 3), (63, 3), (200, 1)]
        );
        assert_eq!(
            PageSet::full(130).runs().collect::<Vec<_>>(),
            vec![(0, 130)]
        );
    }

    #[test]
    fn union_grows_to_the_larger_set() {
        let mut a = PageSet::new(10);
        a.insert(1);
        let mut b = PageSet::new(100);
        b.insert(90);
        a.union(&b);
        assert_eq!(a.pages(), 100);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 90]);
    }

    #[test]
    fn insert_words_at_places_a_region_bitmap() {
        let mut s = PageSet::new(200);
        let dropped = s.insert_words_at(100, &[0b1011, 1], 65);
        assert_eq!(dropped, 0);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![100, 101, 103, 164]);
        let dropped = s.insert_words_at(190, &[u64::MAX], 64);
        assert_eq!(dropped, 54);
    }
}
